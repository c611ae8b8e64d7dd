package delivery

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/tlspolicy"
)

// hostileMX serves every connection with behave, on 127.0.0.1:0.
func hostileMX(t *testing.T, behave func(c net.Conn, r *bufio.Reader)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				behave(c, bufio.NewReader(c))
				<-done // hold the connection as a hostile peer would
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// expect reads lines until one starts with prefix.
func expect(r *bufio.Reader, prefix string) bool {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return false
		}
		if strings.HasPrefix(strings.ToUpper(line), prefix) {
			return true
		}
	}
}

// TestHostileMXes: peers that tarpit, drop the connection mid-DATA, send
// garbage or endless replies, or hang in the TLS handshake each end in a
// timeout or error and a deferral, never a stuck worker or a bounce.
func TestHostileMXes(t *testing.T) {
	cases := []struct {
		name   string
		behave func(c net.Conn, r *bufio.Reader)
		reason string
		// policy, when set, replaces opportunistic TLS: where TLS is only
		// opportunistic a broken handshake is retried in cleartext
		// (TestOpportunisticFallback), so these rows require it.
		policy tlspolicy.Policy
	}{
		{"tarpit: no greeting", func(c net.Conn, r *bufio.Reader) {}, "timeout", nil},
		{"silent after EHLO", func(c net.Conn, r *bufio.Reader) {
			fmt.Fprintf(c, "220 tarpit ESMTP\r\n")
		}, "timeout", nil},
		{"garbage greeting", func(c net.Conn, r *bufio.Reader) {
			fmt.Fprintf(c, "HELLO THERE, THIS IS NOT SMTP\r\n")
		}, "", nil},
		{"endless reply line", func(c net.Conn, r *bufio.Reader) {
			chunk := []byte(strings.Repeat("x", 64<<10))
			c.Write([]byte("220-"))
			for i := 0; i < 64*16; i++ { // up to 64 MiB, unless the client gives up first
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}, "too long", nil},
		{"drops the connection mid-DATA", func(c net.Conn, r *bufio.Reader) {
			fmt.Fprintf(c, "220 mx ESMTP\r\n")
			expect(r, "EHLO")
			fmt.Fprintf(c, "250 mx\r\n")
			expect(r, "MAIL")
			fmt.Fprintf(c, "250 ok\r\n")
			expect(r, "RCPT")
			fmt.Fprintf(c, "250 ok\r\n")
			expect(r, "DATA")
			fmt.Fprintf(c, "354 go on\r\n")
			r.ReadString('\n')
			c.Close()
		}, "", nil},
		{"hangs in the TLS handshake", func(c net.Conn, r *bufio.Reader) {
			fmt.Fprintf(c, "220 mx ESMTP\r\n")
			expect(r, "EHLO")
			fmt.Fprintf(c, "250-mx\r\n250 STARTTLS\r\n")
			expect(r, "STARTTLS")
			fmt.Fprintf(c, "220 go ahead\r\n") // and then never a TLS byte
		}, "4.7.5", tlspolicy.Fixed{Level: tlspolicy.Encrypt}},
		{"answers the TLS handshake with garbage", func(c net.Conn, r *bufio.Reader) {
			fmt.Fprintf(c, "220 mx ESMTP\r\n")
			expect(r, "EHLO")
			fmt.Fprintf(c, "250-mx\r\n250 STARTTLS\r\n")
			expect(r, "STARTTLS")
			fmt.Fprintf(c, "220 go ahead\r\n")
			c.Write([]byte(strings.Repeat("\x15\x03\x03garbage", 100)))
		}, "4.7.5", tlspolicy.Fixed{Level: tlspolicy.Encrypt}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, smtptest.Start(t, nil))
			if tc.policy != nil {
				w.engine.d.Policy = tc.policy
			}
			w.engine.cfg.Port = hostileMX(t, tc.behave)
			w.engine.cfg.Timeouts = Timeouts{Connect: time.Second, Greeting: 500 * time.Millisecond,
				Command: 500 * time.Millisecond, Block: 500 * time.Millisecond, FinalDot: 500 * time.Millisecond}
			id := w.submit(sender, "a@dest.test")
			done := make(chan struct{})
			go func() { w.run(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("the delivery worker is stuck")
			}
			r := w.state(id).Recipients[0]
			if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "4") {
				t.Fatalf("want a deferral, got %v %q", r.State, r.LastReply)
			}
			if !strings.Contains(r.LastReply, tc.reason) {
				t.Fatalf("reply %q does not say %q", r.LastReply, tc.reason)
			}
			if len(w.bounces()) != 0 {
				t.Fatal("bounced")
			}
		})
	}
}
