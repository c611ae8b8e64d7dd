package submission

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
)

const (
	testUser     = "app"
	testPassword = "correct horse battery staple"
)

type harness struct {
	t        testing.TB
	q        *queue.Queue
	users    *auth.Store
	quota    *quota.Counter
	srv      *Server
	starttls string // address of the STARTTLS listener
	implicit string // address of the implicit-TLS listener
	logs     *logBuffer
}

// logBuffer keeps what the server logged, for tests that check the log.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type harnessOption func(*Config, *auth.Limits)

func newHarness(t testing.TB, opts ...harnessOption) *harness {
	t.Helper()
	dir := t.TempDir()
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	users, _ := auth.NewStore(db, nil)
	if err := users.Add(testUser, testPassword, []string{"*@example.org"}); err != nil {
		t.Fatal(err)
	}
	users.Add("free", testPassword, nil)
	cfg := Config{Hostname: "relay.test", MaxMessageBytes: 64 << 10, MaxRecipients: 5, MaxLineLength: 2000,
		CommandTimeout: 10 * time.Second, DataTimeout: 10 * time.Second, MaxConnections: 50, MaxConnectionsPerIP: 20}
	limits := auth.DefaultLimits
	for _, o := range opts {
		o(&cfg, &limits)
	}
	cert, err := SelfSigned("relay.test")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	counter, err := quota.Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(cfg, Deps{
		Queue: q, Auth: auth.NewVerifier(users, limits, nil), Log: log, Quota: counter,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil },
		Sleep:          func(time.Duration) {},
	})
	l1, _ := net.Listen("tcp", "127.0.0.1:0")
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.ServeSTARTTLS(l1)
	go srv.ServeTLS(l2)
	h := &harness{t: t, q: q, users: users, quota: counter, srv: srv, starttls: l1.Addr().String(), implicit: l2.Addr().String(), logs: logs}
	t.Cleanup(func() {
		srv.smtp.Close()
		q.Close()
		db.Close()
	})
	return h
}

var clientTLS = &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test"}

// raw is a line-level client for checking exact replies.
type raw struct {
	t    testing.TB
	conn net.Conn
	text *textproto.Conn
}

func dialRaw(t testing.TB, addr string) *raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := &raw{t: t, conn: c, text: textproto.NewConn(c)}
	t.Cleanup(func() { c.Close() })
	return r
}

func dialRawTLS(t testing.TB, addr string) *raw {
	r := dialRaw(t, addr)
	tc := tls.Client(r.conn, clientTLS)
	r.conn, r.text = tc, textproto.NewConn(tc)
	return r
}

// reply reads one (possibly multi-line) reply: "code text".
func (r *raw) reply() string {
	r.t.Helper()
	var lines []string
	for {
		line, err := r.text.ReadLine()
		if err != nil {
			return "EOF: " + err.Error()
		}
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			break
		}
	}
	return strings.Join(lines, "\n")
}

func (r *raw) cmd(line string) string {
	r.t.Helper()
	fmt.Fprintf(r.conn, "%s\r\n", line)
	return r.reply()
}

// expect sends line and checks the reply starts with want ("" sends nothing).
func (r *raw) expect(line, want string) string {
	r.t.Helper()
	var got string
	if line == "" {
		got = r.reply()
	} else {
		got = r.cmd(line)
	}
	last := got[strings.LastIndex(got, "\n")+1:]
	if !strings.HasPrefix(last, want) {
		r.t.Fatalf("after %q: got %q, want %q", line, got, want)
	}
	return got
}

func (r *raw) startTLS() {
	r.t.Helper()
	r.expect("STARTTLS", "220")
	tc := tls.Client(r.conn, clientTLS)
	if err := tc.Handshake(); err != nil {
		r.t.Fatal(err)
	}
	r.conn, r.text = tc, textproto.NewConn(tc)
}

func plainToken(user, pass string) string {
	return b64("\x00" + user + "\x00" + pass)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// loggedIn returns a raw client past greeting, STARTTLS, EHLO and AUTH.
func (h *harness) loggedIn(user string) *raw {
	r := dialRaw(h.t, h.starttls)
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	r.startTLS()
	r.expect("EHLO client.test", "250")
	r.expect("AUTH PLAIN "+plainToken(user, testPassword), "235")
	return r
}

// inTransaction returns a logged-in client past MAIL FROM and RCPT TO.
func (h *harness) inTransaction(user string) *raw {
	r := h.loggedIn(user)
	r.expect("MAIL FROM:<app@example.org>", "250")
	r.expect("RCPT TO:<a@dest.test>", "250")
	return r
}

// sendData sends DATA with content written exactly as given (it must end
// with the terminating "\r\n.\r\n" or not, as the test wants).
func (r *raw) sendData(content string) string {
	r.t.Helper()
	r.expect("DATA", "354")
	io.WriteString(r.conn, content)
	return r.reply()
}

func (h *harness) only() (queue.Message, []byte) {
	h.t.Helper()
	msgs, err := h.q.List(queue.Filter{})
	if err != nil || len(msgs) != 1 {
		h.t.Fatalf("want 1 queued message, have %d (%v)", len(msgs), err)
	}
	rc, err := h.q.Body(msgs[0].ID)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rc.Close()
	body, _ := io.ReadAll(bufio.NewReader(rc))
	return msgs[0], body
}

func (h *harness) count() int {
	n, _ := h.q.Count()
	return n
}
