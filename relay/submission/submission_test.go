package submission

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"net/textproto"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
)

const sample = "From: App <app@example.org>\r\nTo: a@dest.test\r\nSubject: hello\r\n" +
	"Message-ID: <m1@example.org>\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\n\r\nBody line 1\r\n..leading dot\r\n"

func TestSubmitOverSTARTTLSStoresMessageExactly(t *testing.T) {
	h := newHarness(t)
	c, err := smtp.DialStartTLS(h.starttls, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatal(err)
	}
	err = c.Mail("app@example.org", &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env42", RequireTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("a@dest.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig@dest.test"}); err != nil {
		t.Fatal(err)
	}
	c.Rcpt("b@other.test", nil)
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	// The client dot-stuffs "..leading dot" on the wire; the queue keeps the original.
	w.Write([]byte(strings.Replace(sample, "..leading", ".leading", 1)))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	m, body := h.only()
	want := strings.Replace(sample, "..leading", ".leading", 1)
	if !bytes.HasSuffix(body, []byte(want)) {
		t.Fatalf("body does not end with the submitted message byte for byte:\n%q", body)
	}
	added := string(body[:len(body)-len(want)])
	if !strings.HasPrefix(added, "Received: from client.test") && !strings.HasPrefix(added, "Received: from localhost") {
		t.Errorf("no Received header first: %q", added)
	}
	for _, part := range []string{"by relay.test (Postern) with ESMTPSA", "version=TLS 1.3", "authenticated user app", "id " + m.ID} {
		if !strings.Contains(added, part) {
			t.Errorf("Received lacks %q: %q", part, added)
		}
	}
	if strings.Contains(added, "Message-ID:") || strings.Contains(added, "Date:") {
		t.Errorf("added Message-ID/Date although present: %q", added)
	}
	if m.From != "app@example.org" || m.AuthUser != testUser || m.Return != "HDRS" || m.EnvelopeID != "env42" || !m.RequireTLS {
		t.Errorf("envelope: %+v", m.Envelope)
	}
	if len(m.Recipients) != 2 || m.Recipients[0].Original != "RFC822;orig@dest.test" ||
		strings.Join(m.Recipients[0].Notify, ",") != "FAILURE,DELAY" {
		t.Errorf("recipients: %+v", m.Recipients)
	}
}

func TestSubmitOverImplicitTLSWithLogin(t *testing.T) {
	h := newHarness(t)
	c, err := smtp.DialTLS(h.implicit, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient(testUser, testPassword)); err != nil {
		t.Fatal(err)
	}
	msg := "Subject: no id\r\n\r\nhi\r\n"
	if err := c.SendMail("app@example.org", []string{"x@dest.test"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	m, body := h.only()
	if !bytes.HasSuffix(body, []byte(msg)) {
		t.Fatalf("body %q", body)
	}
	if !bytes.Contains(body, []byte("Message-ID: <"+m.ID+"@relay.test>\r\n")) || !bytes.Contains(body, []byte("\r\nDate: ")) {
		t.Errorf("missing Message-ID or Date added by the MSA: %q", body)
	}
}

func TestChunkingSubmission(t *testing.T) {
	h := newHarness(t)
	r := h.inTransaction(testUser)
	part1, part2 := "Subject: chunks\r\n\r\nfirst ", "second\r\n"
	fmt.Fprintf(r.conn, "BDAT %d\r\n%s", len(part1), part1)
	r.expect("", "250")
	fmt.Fprintf(r.conn, "BDAT %d LAST\r\n%s", len(part2), part2)
	r.expect("", "250 2.0.0 OK queued as ")
	if _, body := h.only(); !bytes.HasSuffix(body, []byte(part1+part2)) {
		t.Fatalf("body %q", body)
	}
}

// Each refusal the issue names, with its exact reply code.
func TestRefusals(t *testing.T) {
	t.Run("AUTH before TLS is 538 and not advertised", func(t *testing.T) {
		h := newHarness(t)
		r := dialRaw(t, h.starttls)
		r.expect("", "220")
		if ehlo := r.expect("EHLO client.test", "250"); strings.Contains(ehlo, "AUTH") {
			t.Errorf("AUTH advertised in cleartext: %q", ehlo)
		}
		r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "538 5.7.11")
		r.expect("MAIL FROM:<app@example.org>", "530 5.7.0")
	})
	t.Run("MAIL before AUTH is 530", func(t *testing.T) {
		h := newHarness(t)
		r := dialRaw(t, h.starttls)
		r.expect("", "220")
		r.expect("EHLO client.test", "250")
		r.startTLS()
		if ehlo := r.expect("EHLO client.test", "250"); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
			t.Errorf("AUTH not offered under TLS: %q", ehlo)
		}
		r.expect("MAIL FROM:<app@example.org>", "530 5.7.0")
		r.expect("RCPT TO:<a@dest.test>", "5")
	})
	t.Run("bad password is 535", func(t *testing.T) {
		h := newHarness(t)
		r := dialRawTLS(t, h.implicit)
		r.expect("", "220")
		r.expect("EHLO client.test", "250")
		r.expect("AUTH PLAIN "+plainToken(testUser, "wrong"), "535 5.7.8")
		r.expect("AUTH PLAIN "+plainToken("nobody", "wrong"), "535 5.7.8")
		r.expect("AUTH PLAIN "+b64("admin\x00"+testUser+"\x00"+testPassword), "535 5.7.8") // authorize as another identity
	})
	t.Run("sender outside the user's patterns is 553 5.7.1", func(t *testing.T) {
		h := newHarness(t)
		r := h.loggedIn(testUser)
		r.expect("MAIL FROM:<ceo@elsewhere.example>", "553 5.7.1")
		r.expect("MAIL FROM:<>", "553 5.7.1")
		r.expect("MAIL FROM:<billing@example.org>", "250")
	})
	t.Run("SIZE over the limit is 552 at MAIL and at DATA", func(t *testing.T) {
		h := newHarness(t)
		r := h.loggedIn(testUser)
		r.expect("MAIL FROM:<app@example.org> SIZE=999999", "552 5.3.4")
		r.expect("MAIL FROM:<app@example.org> SIZE=100", "250")
		r.expect("RCPT TO:<a@dest.test>", "250")
		big := strings.Repeat(strings.Repeat("x", 998)+"\r\n", 70)
		got := r.sendData("Subject: big\r\n\r\n" + big + ".\r\n")
		if !strings.HasPrefix(got, "552 5.3.4") {
			t.Fatalf("oversized DATA: %q", got)
		}
		if h.count() != 0 {
			t.Fatal("oversized message queued")
		}
	})
	t.Run("too many recipients is 452 4.5.3", func(t *testing.T) {
		h := newHarness(t)
		r := h.loggedIn(testUser)
		r.expect("MAIL FROM:<app@example.org>", "250")
		for i := 0; i < 5; i++ {
			r.expect(fmt.Sprintf("RCPT TO:<r%d@dest.test>", i), "250")
		}
		r.expect("RCPT TO:<r5@dest.test>", "452 4.5.3")
	})
	t.Run("non-ASCII address without SMTPUTF8 is 553 5.6.7", func(t *testing.T) {
		h := newHarness(t)
		r := h.loggedIn("free")
		r.expect("MAIL FROM:<app@example.org>", "250")
		r.expect("RCPT TO:<jörg@dest.test>", "553 5.6.7")
		r.expect("RSET", "250")
		r.expect("MAIL FROM:<app@example.org> SMTPUTF8", "250")
		r.expect("RCPT TO:<jörg@dest.test>", "250")
	})
	t.Run("recipient without a domain is refused", func(t *testing.T) {
		h := newHarness(t)
		r := h.loggedIn(testUser)
		r.expect("MAIL FROM:<app@example.org>", "250")
		r.expect("RCPT TO:<postmaster>", "501")
		r.expect("RCPT TO:<a@bad..domain>", "501 5.1.3")
	})
}

func TestSmugglingIsRefused(t *testing.T) {
	for name, content := range map[string]string{
		"bare LF line end":          "Subject: x\r\n\r\nline\nmore\r\n.\r\n",
		"bare CR":                   "Subject: x\r\n\r\nline\rmore\r\n.\r\n",
		`\n.\r\n smuggled end`:      "Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n",
		`\r\n.\n smuggled end`:      "Subject: x\r\n\r\nhi\r\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
		`\r.\r\n smuggled end`:      "Subject: x\r\n\r\nhi\r.\r\nMAIL FROM:<evil@x>\r\n.\r\n",
		"bare LF in header section": "Subject: x\nBcc: y\r\n\r\nhi\r\n.\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			r := h.inTransaction(testUser)
			if got := r.sendData(content); !strings.HasPrefix(got, "550 5.5.2") {
				t.Fatalf("DATA reply %q", got)
			}
			if h.count() != 0 {
				t.Fatal("smuggling message was queued")
			}
			// The session stays usable and in step.
			r.expect("NOOP", "250")
		})
	}
	t.Run("BDAT with bare LF", func(t *testing.T) {
		h := newHarness(t)
		r := h.inTransaction(testUser)
		chunk := "Subject: x\r\n\r\nhi\n.\r\n"
		fmt.Fprintf(r.conn, "BDAT %d LAST\r\n%s", len(chunk), chunk)
		r.expect("", "550 5.5.2")
		if h.count() != 0 {
			t.Fatal("queued")
		}
	})
}

// Commands pipelined behind STARTTLS arrive before the TLS handshake; they
// must be discarded, not run inside the TLS session (CVE-2011-0411 class).
func TestSTARTTLSInjectionDiscarded(t *testing.T) {
	h := newHarness(t)
	r := dialRaw(t, h.starttls)
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	fmt.Fprintf(r.conn, "STARTTLS\r\nAUTH PLAIN %s\r\nMAIL FROM:<app@example.org>\r\n", plainToken(testUser, testPassword))
	r.expect("", "220")
	tc := tls.Client(r.conn, clientTLS)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake after injected commands: %v", err)
	}
	r.conn, r.text = tc, textproto.NewConn(tc)
	// Had the injected lines run, this EHLO's reply would come after a 235
	// and a 250; the first reply in TLS must be EHLO's own, and MAIL must
	// still need AUTH.
	r.expect("EHLO client.test", "250")
	r.expect("MAIL FROM:<app@example.org>", "530 5.7.0")
}

func TestAuthThrottling(t *testing.T) {
	h := newHarness(t, func(_ *Config, l *auth.Limits) {
		*l = auth.Limits{FreeFailures: 1, MaxFailures: 3, Window: 1e12, Lockout: 1e12}
	})
	r := dialRawTLS(t, h.implicit)
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	for i := 0; i < 3; i++ {
		r.expect("AUTH PLAIN "+plainToken(testUser, "guess"), "535 5.7.8")
	}
	// Locked out now, even with the right password.
	r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "454 4.7.0")
	r2 := dialRawTLS(t, h.implicit)
	r2.expect("", "220")
	r2.expect("EHLO client.test", "250")
	r2.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "454 4.7.0")
}

func TestConnectionLimits(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) { c.MaxConnectionsPerIP = 2 })
	a, b := dialRaw(t, h.starttls), dialRaw(t, h.starttls)
	a.expect("", "220")
	b.expect("", "220")
	c := dialRaw(t, h.starttls)
	c.expect("", "421 4.7.0")
	a.expect("QUIT", "221")
	a.conn.Close()
	// Once one leaves, a new connection is served. The server notices the
	// close asynchronously, so poll a bounded number of times.
	for i := 0; ; i++ {
		d := dialRaw(t, h.starttls)
		if got := d.reply(); strings.HasPrefix(got, "220") {
			break
		} else if i == 200 {
			t.Fatalf("slot never freed: %q", got)
		}
	}
}

func TestQuotedLocalPartKept(t *testing.T) {
	h := newHarness(t)
	r := h.loggedIn("free")
	r.expect(`MAIL FROM:<"john smith"@example.org>`, "250")
	r.expect(`RCPT TO:<"a\"b"@dest.test>`, "250")
	r.sendData("Subject: q\r\n\r\nx\r\n.\r\n")
	m, _ := h.only()
	if m.From != `"john smith"@example.org` || m.Recipients[0].Addr != `"a\"b"@dest.test` {
		t.Fatalf("quoted addresses: from %q rcpt %q", m.From, m.Recipients[0].Addr)
	}
}

func TestHeloCannotInjectHeaders(t *testing.T) {
	h := newHarness(t)
	r := dialRawTLS(t, h.implicit)
	r.expect("", "220")
	r.expect("EHLO evil(x)", "250")
	r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "235")
	r.expect("MAIL FROM:<app@example.org>", "250")
	r.expect("RCPT TO:<a@dest.test>", "250")
	r.sendData("Subject: q\r\n\r\nx\r\n.\r\n")
	if _, body := h.only(); !bytes.HasPrefix(body, []byte("Received: from invalid (")) {
		t.Fatalf("HELO passed into header: %q", body[:60])
	}
}

func TestDataTimeoutClosesConnection(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) { c.DataTimeout = 200 * time.Millisecond })
	r := h.inTransaction(testUser)
	r.expect("DATA", "354")
	io.WriteString(r.conn, "Subject: stalled\r\n\r\nhalf a mess") // and then nothing
	r.expect("", "421 4.4.2")
	for i := 0; i < 5; i++ { // the server may say goodbye once more, then closes
		if got := r.reply(); strings.HasPrefix(got, "EOF") {
			if h.count() != 0 {
				t.Fatal("stalled message queued")
			}
			return
		}
	}
	t.Fatal("connection left open after a data timeout")
}

func TestOverlongLines(t *testing.T) {
	h := newHarness(t)
	r := h.inTransaction(testUser)
	got := r.sendData("Subject: long\r\n\r\n" + strings.Repeat("y", 3000) + "\r\n.\r\n")
	if !strings.HasPrefix(got, "500") {
		t.Fatalf("overlong content line: %q", got)
	}
	if h.count() != 0 {
		t.Fatal("message with an overlong line queued")
	}
	r2 := h.loggedIn(testUser)
	r2.expect("MAIL FROM:<app@example.org> "+strings.Repeat("X", 3000), "500")
}

func TestOldTLSRefused(t *testing.T) {
	h := newHarness(t)
	old := &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}
	if c, err := tls.Dial("tcp", h.implicit, old); err == nil {
		c.Close()
		t.Fatal("TLS 1.1 handshake accepted on the implicit-TLS port")
	}
	r := dialRaw(t, h.starttls)
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	r.expect("STARTTLS", "220")
	if err := tls.Client(r.conn, old).Handshake(); err == nil {
		t.Fatal("TLS 1.1 handshake accepted after STARTTLS")
	}
}

// A user marked require_tls has every message queued as REQUIRETLS, and
// "TLS-Required: No" from such a user changes nothing; from others it is kept.
func TestRequireTLSUserAndTLSRequiredNo(t *testing.T) {
	h := newHarness(t)
	if err := h.users.SetRequireTLS("free", true); err != nil {
		t.Fatal(err)
	}
	send := func(user string) queue.Message {
		c, err := smtp.DialStartTLS(h.starttls, clientTLS)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Auth(sasl.NewPlainClient("", user, testPassword)); err != nil {
			t.Fatal(err)
		}
		if err := c.SendMail("app@example.org", []string{"a@dest.test"}, strings.NewReader("TLS-Required: No\r\nSubject: x\r\n\r\nhi\r\n")); err != nil {
			t.Fatal(err)
		}
		list, _ := h.q.List(queue.Filter{})
		for _, m := range list {
			if m.AuthUser == user {
				return m
			}
		}
		t.Fatalf("no message from %s", user)
		return queue.Message{}
	}
	if m := send("free"); !m.RequireTLS || m.TLSOptional {
		t.Errorf("require_tls user: requiretls %v, tls optional %v", m.RequireTLS, m.TLSOptional)
	}
	if m := send(testUser); m.RequireTLS || !m.TLSOptional {
		t.Errorf("ordinary user: requiretls %v, tls optional %v", m.RequireTLS, m.TLSOptional)
	}
}

// A client that connects to the implicit-TLS port and never finishes the
// handshake loses its connection after the handshake timeout, not after the
// command timeout (slowloris); a client that finished it keeps the command
// timeout.
func TestImplicitTLSHandshakeTimeout(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) { c.HandshakeTimeout = 300 * time.Millisecond })
	silent, err := net.Dial("tcp", h.implicit)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("the server sent something to a client that sent nothing")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept a silent connection open for %s", time.Since(start).Round(time.Millisecond))
	}

	c, err := tls.Dial("tcp", h.implicit, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(600 * time.Millisecond) // past the handshake timeout, within the command timeout
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "220 ") {
		t.Fatalf("greeting: %q %v", line, err)
	}
	fmt.Fprintf(c, "NOOP\r\n")
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "250 ") {
		t.Fatalf("after the handshake the session was cut: %q %v", line, err)
	}
}

// TestShutdownDrains: on shutdown an idle session is told 421 and closed at
// once, a connection before EHLO is closed, and a transaction in progress
// finishes with its 250 before its session closes; nothing waits for the
// deadline.
func TestShutdownDrains(t *testing.T) {
	h := newHarness(t)
	idle := h.loggedIn(testUser)
	fresh := dialRaw(t, h.implicit) // no handshake, no session
	busy := h.inTransaction(testUser)
	busy.expect("DATA", "354")
	io.WriteString(busy.conn, "Subject: half\r\n\r\nfirst half\r\n")

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- h.srv.Shutdown(ctx)
	}()
	if got := idle.reply(); !strings.HasPrefix(got, "421 4.3.2") {
		t.Fatalf("idle session got %q, want 421 4.3.2", got)
	}
	fresh.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := fresh.conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection without a session stayed open: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("shutdown returned (%v) while a transaction was in progress", err)
	case <-time.After(200 * time.Millisecond):
	}
	io.WriteString(busy.conn, "second half\r\n.\r\n")
	if got := busy.reply(); !strings.HasPrefix(got, "250") {
		t.Fatalf("transaction in progress at shutdown: %q", got)
	}
	if got := busy.reply(); !strings.HasPrefix(got, "EOF") {
		t.Fatalf("session stayed open after its transaction: %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	if _, body := h.only(); !bytes.Contains(body, []byte("first half\r\nsecond half\r\n")) {
		t.Fatalf("message finished during shutdown not queued whole: %q", body)
	}
	if c, err := net.Dial("tcp", h.starttls); err == nil {
		c.Close()
		t.Fatal("still accepting after shutdown")
	}
}

// TestIdleFloodDoesNotLockOut: 1,000 idle connections (slowloris) from one
// address hit the per-address cap; 1,000 spread over twenty addresses fill
// the server, and still a client with a password from another address gets
// in and submits, because the oldest unauthenticated connection gives way.
func TestIdleFloodDoesNotLockOut(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) { c.MaxConnections, c.MaxConnectionsPerIP = 1000, 50 })
	dialFrom := func(ip string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
		c, err := d.Dial("tcp", h.starttls)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	greeting := func(c net.Conn) string {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "EOF"
		}
		return line
	}
	flood := func(ips []string, perIP int) (served, refused int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, ip := range ips {
			for range perIP {
				wg.Add(1)
				go func() {
					defer wg.Done()
					g := greeting(dialFrom(ip))
					mu.Lock()
					defer mu.Unlock()
					switch {
					case strings.HasPrefix(g, "220"):
						served++
					case strings.HasPrefix(g, "421 4.7.0"):
						refused++
					default:
						t.Errorf("flood connection from %s: %q", ip, g)
					}
				}()
			}
		}
		wg.Wait()
		return served, refused
	}
	if served, refused := flood([]string{"127.0.0.3"}, 1000); served != 50 || refused != 950 {
		t.Fatalf("1,000 from one address: %d served, %d refused; want 50 and 950", served, refused)
	}
	var ips []string
	for i := 10; i < 30; i++ {
		ips = append(ips, fmt.Sprintf("127.0.0.%d", i))
	}
	if served, refused := flood(ips, 50); served != 1000 || refused != 0 {
		t.Fatalf("1,000 from twenty addresses: %d served, %d refused", served, refused)
	}
	// The server is full of idle connections; a real client still gets in.
	c, err := smtp.NewClientStartTLS(dialFrom("127.0.0.2"), clientTLS)
	if err != nil {
		t.Fatalf("legitimate client locked out: %v", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", testUser, testPassword)); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("app@example.org", []string{"a@dest.test"}, strings.NewReader(sample)); err != nil {
		t.Fatalf("legitimate client during the flood: %v", err)
	}
}

// TestAuthFailuresRevealNothing: an unknown user and a wrong password get
// the same reply, and the log names the client address and the (escaped)
// user name but never the password.
func TestAuthFailuresRevealNothing(t *testing.T) {
	h := newHarness(t)
	var logged bytes.Buffer
	var mu sync.Mutex
	h.srv.log = slog.New(slog.NewJSONHandler(lockedWriter{&mu, &logged}, nil))
	const secret = "hunter2-must-not-be-logged"
	replies := map[string]string{}
	for _, name := range []string{testUser, "ghost", "evil\r\nX-Injected: yes"} {
		r := dialRawTLS(t, h.implicit)
		r.expect("", "220")
		r.expect("EHLO client.test", "250")
		replies[name] = r.expect("AUTH PLAIN "+plainToken(name, secret), "535 5.7.8")
		r.expect("AUTH LOGIN", "334")
		r.expect(b64(name), "334")
		if got := r.expect(b64(secret), "535 5.7.8"); got != replies[name] {
			t.Errorf("LOGIN and PLAIN failures differ: %q vs %q", got, replies[name])
		}
	}
	if replies[testUser] != replies["ghost"] {
		t.Fatalf("a wrong password (%q) and an unknown user (%q) are told apart", replies[testUser], replies["ghost"])
	}
	mu.Lock()
	defer mu.Unlock()
	log := logged.String()
	if strings.Contains(log, secret) {
		t.Fatalf("the password is in the log:\n%s", log)
	}
	if !strings.Contains(log, `"client_ip":"127.0.0.1"`) || !strings.Contains(log, `"user":"evil\r\nX-Injected: yes"`) {
		t.Fatalf("failures not logged with the address and the escaped name:\n%s", log)
	}
	if strings.Contains(log, "\nX-Injected") {
		t.Fatalf("a user name broke a log line:\n%s", log)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestNoPathRelaysWithoutAuth is the open-relay matrix: every way to reach
// RCPT and DATA without a successful AUTH is refused, and nothing is queued.
func TestNoPathRelaysWithoutAuth(t *testing.T) {
	type step struct{ send, want string }
	for _, tc := range []struct {
		name     string
		implicit bool
		steps    []step
	}{
		{"no AUTH at all", true, []step{{"MAIL FROM:<app@example.org>", "530 5.7.0"},
			{"RCPT TO:<a@dest.test>", "5"}, {"DATA", "5"}, {"BDAT 5 LAST", "5"}}},
		{"null sender, postmaster recipient", true, []step{{"MAIL FROM:<>", "530 5.7.0"},
			{"RCPT TO:<postmaster@dest.test>", "5"}}},
		{"AUTH in cleartext", false, []step{{"AUTH PLAIN " + plainToken(testUser, testPassword), "538 5.7.11"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"AUTH LOGIN in cleartext", false, []step{{"AUTH LOGIN", "538 5.7.11"}, {"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		// go-smtp decodes the initial response before the session is
		// asked, and answers undecodable base64 there with 454 4.7.0
		// (sasl.go says why Postern cannot reach it).
		{"malformed base64 initial response", true, []step{{"AUTH PLAIN !!!notbase64", "454 4.7.0"}, {"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"PLAIN without the NUL separators", true, []step{{"AUTH PLAIN " + b64(testUser+testPassword), "501 5.5.2"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"empty initial response then cancel", true, []step{{"AUTH PLAIN =", "501 5.5.2"}, {"AUTH PLAIN", "334"}, {"*", "501"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"LOGIN abandoned after the name", true, []step{{"AUTH LOGIN", "334"}, {b64(testUser), "334"}, {"*", "501"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"unknown mechanism", true, []step{{"AUTH CRAM-MD5", "504"}, {"AUTH ANONYMOUS", "504"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"right user, empty password", true, []step{{"AUTH PLAIN " + plainToken(testUser, ""), "5"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"authorization identity of another user", true, []step{{"AUTH PLAIN " + b64("free\x00"+testUser+"\x00"+testPassword), "535 5.7.8"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			var r *raw
			if tc.implicit {
				r = dialRawTLS(t, h.implicit)
			} else {
				r = dialRaw(t, h.starttls)
			}
			r.expect("", "220")
			r.expect("EHLO client.test", "250")
			for _, s := range tc.steps {
				r.expect(s.send, s.want)
			}
			if h.count() != 0 {
				t.Fatal("a message was queued without AUTH")
			}
		})
	}
	// The whole transaction in one write behind AUTH: nothing after a
	// failed AUTH or a refused sender may take effect.
	for _, tc := range []struct {
		name, password, from string
		replies              []string
	}{
		{"pipelined behind a failed AUTH", "wrong", "app@example.org", []string{"535 5.7.8", "530 5.7.0", "5", "5"}},
		{"pipelined behind a good AUTH with a refused sender", testPassword, "ceo@elsewhere.example", []string{"235", "553 5.7.1", "5", "5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			r := dialRawTLS(t, h.implicit)
			r.expect("", "220")
			r.expect("EHLO client.test", "250")
			fmt.Fprintf(r.conn, "AUTH PLAIN %s\r\nMAIL FROM:<%s>\r\nRCPT TO:<a@dest.test>\r\nDATA\r\nSubject: relayed\r\n\r\nhi\r\n.\r\n",
				plainToken(testUser, tc.password), tc.from)
			for _, want := range tc.replies {
				r.expect("", want)
			}
			if h.count() != 0 {
				t.Fatal("the pipelined message was queued")
			}
		})
	}
}

// TestSubmissionTrace: an accepted message has a submission span with its
// queue ID, and the queue commit inside it.
func TestSubmissionTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	t.Cleanup(func() { otel.SetTracerProvider(tracenoop.NewTracerProvider()) })
	h := newHarness(t)
	r := h.inTransaction(testUser)
	r.sendData(sample + ".\r\n")
	m, _ := h.only()
	spans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[s.Name()] = s
	}
	sub, commit := spans["submission"], spans["queue.commit"]
	if sub == nil || commit == nil {
		t.Fatalf("spans %v", spans)
	}
	if !slices.Contains(sub.Attributes(), attribute.String("postern.queue_id", m.ID)) {
		t.Errorf("submission span attributes %v lack queue ID %s", sub.Attributes(), m.ID)
	}
	if commit.Parent().SpanID() != sub.SpanContext().SpanID() {
		t.Error("queue.commit is not inside the submission span")
	}
}

// slotlessAuth is a verifier whose hash slots are all taken until the
// check's deadline: it records the deadline it was given and answers as
// auth.Verifier does when it passes.
type slotlessAuth struct{ deadline chan time.Time }

func (a slotlessAuth) Verify(ctx context.Context, _, _, _ string) (auth.User, time.Duration, error) {
	d, _ := ctx.Deadline()
	a.deadline <- d
	<-ctx.Done()
	return auth.User{}, 0, fmt.Errorf("waiting for a hash slot: %w", auth.ErrBusy)
}

// An AUTH that gets no hash slot within its command deadline hears
// 454 4.7.0, a temporary failure, not 535: its password was never judged.
func TestAuthWithoutHashSlotIs454(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) { c.CommandTimeout = 300 * time.Millisecond })
	a := slotlessAuth{make(chan time.Time, 1)}
	h.srv.auth = a
	r := dialRawTLS(t, h.implicit)
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	start := time.Now()
	r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "454 4.7.0 Too many authentications in progress")
	if d := <-a.deadline; d.IsZero() || d.Sub(start) > time.Second {
		t.Fatalf("check deadline %v after the command, want within the 300ms command timeout", d.Sub(start))
	}
	r.expect("MAIL FROM:<app@example.org>", "530 5.7.0")
}

// Undecodable base64 in a SASL continuation line is a 501 5.5.2 (RFC 4954
// 4: "MUST reject the AUTH command with a 501 reply"), not go-smtp's 454
// 4.7.0; "*" cancels with 501; an over-long line is 500 5.5.6 and ends the
// connection; and after a 501 the session is in step: a good AUTH follows.
func TestSASLResponsesRFC4954(t *testing.T) {
	h := newHarness(t)
	type step struct{ send, want string }
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"PLAIN, undecodable response", []step{{"AUTH PLAIN", "334 "}, {"!!!notbase64", "501 5.5.2"},
			{"AUTH PLAIN " + plainToken(testUser, testPassword), "235"}}},
		{"LOGIN, undecodable user name", []step{{"AUTH LOGIN", "334 " + b64("Username:")}, {"dXNlcg", "501 5.5.2"},
			{"AUTH PLAIN " + plainToken(testUser, testPassword), "235"}}},
		{"LOGIN, undecodable password", []step{{"AUTH LOGIN", "334"}, {b64(testUser), "334 " + b64("Password:")}, {"%%%", "501 5.5.2"},
			{"AUTH LOGIN " + b64(testUser), "334"}, {b64(testPassword), "235"}}},
		{"PLAIN, decodable but malformed", []step{{"AUTH PLAIN", "334"}, {b64("no separators"), "501 5.5.2"},
			{"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"PLAIN, empty response", []step{{"AUTH PLAIN", "334"}, {"=", "501 5.5.2"}}},
		{"cancelled", []step{{"AUTH LOGIN", "334"}, {"*", "501 5.0.0"}, {"MAIL FROM:<app@example.org>", "530 5.7.0"}}},
		{"wrong password still 535", []step{{"AUTH PLAIN", "334"}, {plainToken(testUser, "guess"), "535 5.7.8"}}},
		{"over-long line", []step{{"AUTH PLAIN", "334"}, {strings.Repeat("A", 13000), "500 5.5.6"}, {"NOOP", "EOF"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRawTLS(t, h.implicit)
			r.expect("", "220")
			r.expect("EHLO client.test", "250")
			for _, s := range tc.steps {
				r.expect(s.send, s.want)
			}
		})
	}
}
