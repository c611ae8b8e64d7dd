package submission

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
)

// FuzzCanonicalAddress: whatever the client sends in MAIL or RCPT, an
// accepted address has exactly one unquoted '@' before the domain, no
// control characters (no header or command injection), and is stable.
func FuzzCanonicalAddress(f *testing.F) {
	for _, s := range []string{"a@b.test", `a b@x.test`, `"q"@x`, "jörg@dest.test", "a@[127.0.0.1]", "@x", "a@", "a\r\nb@x", `a"b@x`, `a\b@x`} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, addr string, utf8 bool) {
		out, serr := canonicalAddress(addr, utf8, smtp.EnhancedCode{5, 1, 3})
		if serr != nil {
			if serr.Code < 500 || serr.Code > 559 {
				t.Fatalf("refusal with code %d", serr.Code)
			}
			return
		}
		if strings.ContainsAny(out, "\r\n\x00") {
			t.Fatalf("control characters survive: %q", out)
		}
		again, serr := canonicalAddress(out, utf8, smtp.EnhancedCode{5, 1, 3})
		if serr != nil && !strings.HasPrefix(out, `"`) {
			t.Fatalf("canonical form %q refused: %v", out, serr)
		}
		if serr == nil && !strings.HasPrefix(out, `"`) && again != out {
			t.Fatalf("not stable: %q -> %q", out, again)
		}
	})
}

// FuzzContent: the content path either refuses a message or stores it with
// every line ending in CRLF and the submitted bytes intact.
func FuzzContent(f *testing.F) {
	for _, s := range []string{"Subject: x\r\n\r\nbody\r\n", "a\nb", "a\rb\r\n", "no end", "\r\n", "", "H: v\r\n continued\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		g := &crlfGuard{r: bytes.NewReader(in)}
		br := bufio.NewReaderSize(g, 64<<10)
		header, _, err := readHeader(br)
		if err != nil {
			return
		}
		rest, err := io.ReadAll(br)
		if err != nil {
			return
		}
		out := append(header, rest...)
		if !bytes.HasPrefix(out, in) {
			t.Fatalf("content changed: %q -> %q", in, out)
		}
		for i, c := range out {
			if c == '\n' && (i == 0 || out[i-1] != '\r') || c == '\r' && (i+1 >= len(out) || out[i+1] != '\n') {
				t.Fatalf("bare CR or LF passed at %d: %q", i, out)
			}
		}
	})
}

// FuzzSession feeds arbitrary bytes to a whole submission session, as a
// client would send them: go-smtp's command parsing and Postern's handlers
// for every command and parameter behind it. The session counts as inside
// TLS, so the fuzzer reaches AUTH, MAIL and RCPT parameters, DATA and BDAT.
// Every reply must be a well-formed SMTP reply, and every queued message
// must come from the one user whose password the fuzzer knows, on an
// envelope that carries no line breaks.
func FuzzSession(f *testing.F) {
	auth := "AUTH PLAIN " + plainToken(testUser, testPassword) + "\r\n"
	for _, s := range []string{
		"EHLO c\r\n" + auth + "MAIL FROM:<app@example.org> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=x+2By\r\n" +
			"RCPT TO:<a@dest.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+40dest.test\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n..dot\r\n.\r\nQUIT\r\n",
		"EHLO c\r\n" + auth + "MAIL FROM:<app@example.org> REQUIRETLS SMTPUTF8\r\nRCPT TO:<jörg@dest.test>\r\nBDAT 19 LAST\r\nSubject: x\r\n\r\nhi\r\nRSET\r\n",
		"EHLO c\r\n" + auth + "MAIL FROM:<>\r\nRCPT TO:<\"q u\"@dest.test>\r\nDATA\r\nTLS-Required: No\r\n\r\n.\r\n",
		// A script cannot wait for the 334s: its LOGIN responses sit in
		// go-smtp's buffer, which RFC 4954 4 forbids, and the exchange
		// (sasl.go) finds the connection ended.
		"EHLO c\r\nAUTH LOGIN\r\n" + b64(testUser) + "\r\n" + b64(testPassword) + "\r\nMAIL FROM:<app@example.org>\r\n",
		"HELO c\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<a@b>\r\nDATA\r\n.\r\nNOOP\r\nVRFY a\r\nHELP\r\n",
		"EHLO c\r\n" + auth + "MAIL FROM:<app@example.org>\r\nRCPT TO:<a@dest.test>\r\nBDAT 5\r\nabcdeBDAT 0 LAST\r\n",
	} {
		f.Add([]byte(s))
	}
	q := &memQueue{}
	srv := New(Config{Hostname: "relay.test", MaxMessageBytes: 1 << 16, MaxRecipients: 5, MaxLineLength: 1000,
		CommandTimeout: 5 * time.Second, DataTimeout: 5 * time.Second},
		Deps{Queue: q, Auth: fixedAuth{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Sleep: func(time.Duration) {}})
	srv.smtp.Backend = smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		sess, err := srv.newSession(c)
		if err == nil {
			sess.(*session).tls = &tls.ConnectionState{Version: tls.VersionTLS13}
		}
		return sess, err
	})
	l := &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
	go srv.smtp.Serve(l)
	f.Cleanup(func() { close(l.closed); srv.smtp.Close() })
	reply := regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)

	f.Fuzz(func(t *testing.T, in []byte) {
		c := &scriptConn{in: bytes.NewReader(in), done: make(chan struct{})}
		l.conns <- c
		<-c.done
		out := c.out.String()
		for _, line := range strings.SplitAfter(out, "\r\n") {
			if strings.HasSuffix(line, "\r\n") && !reply.MatchString(line) {
				t.Fatalf("malformed reply line %q", line)
			}
		}
		for _, env := range q.take() {
			if env.AuthUser != testUser {
				t.Fatalf("queued for %q", env.AuthUser)
			}
			for _, a := range append([]string{env.From}, rcptAddrs(env)...) {
				if strings.ContainsAny(a, "\r\n") {
					t.Fatalf("line break in an envelope address %q", a)
				}
			}
		}
	})
}

func rcptAddrs(env queue.Envelope) []string {
	var out []string
	for _, r := range env.Recipients {
		out = append(out, r.Addr, r.Original)
	}
	return out
}

// memQueue keeps envelopes in memory: fuzzing needs no disk.
type memQueue struct {
	mu   sync.Mutex
	n    int
	envs []queue.Envelope
}

func (q *memQueue) NewID() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.n++
	return fmt.Sprint(q.n)
}

func (q *memQueue) Enqueue(id string, env queue.Envelope, body io.Reader) (string, error) {
	return q.EnqueueSealed(id, env, body, nil)
}

func (q *memQueue) EnqueueSealed(id string, env queue.Envelope, body io.Reader, seal func() ([]byte, error)) (string, error) {
	if _, err := io.Copy(io.Discard, body); err != nil {
		return "", err
	}
	if seal != nil {
		if _, err := seal(); err != nil {
			return "", err
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.envs = append(q.envs, env)
	return id, nil
}

func (q *memQueue) take() []queue.Envelope {
	q.mu.Lock()
	defer q.mu.Unlock()
	envs := q.envs
	q.envs = nil
	return envs
}

// fixedAuth knows one user, allowed any sender.
type fixedAuth struct{}

func (fixedAuth) Verify(_ context.Context, _, name, password string) (auth.User, time.Duration, error) {
	if name == testUser && password == testPassword {
		return auth.User{Name: testUser}, 0, nil
	}
	return auth.User{}, 0, auth.ErrBadCredentials
}

// pipeListener hands the server connections the fuzzer made.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}
func (l *pipeListener) Close() error   { return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{} }

// scriptConn plays a client that sends in and then closes its side; the
// server's replies collect in out.
type scriptConn struct {
	in     *bytes.Reader
	mu     sync.Mutex
	out    bytes.Buffer
	closed bool
	once   sync.Once
	done   chan struct{}
}

func (c *scriptConn) Read(p []byte) (int, error) { return c.in.Read(p) }

// Write fails once the connection is closed, as a socket's does.
func (c *scriptConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(p)
}
func (c *scriptConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		close(c.done)
	})
	return nil
}
func (c *scriptConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 587} }
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
