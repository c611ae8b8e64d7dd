package delivery

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/relay/submission"
)

// strictEHLOMX behaves like OpenSMTPD 6.8: a second EHLO in a session (or
// a second one after STARTTLS) is answered "503 5.5.1 Invalid command:
// Already identified". It offers STARTTLS when withTLS is set. It counts
// connections, refused EHLOs and messages.
type strictEHLOMX struct {
	conns, refused, delivered atomic.Int32
}

func (m *strictEHLOMX) serve(t *testing.T, withTLS bool) int {
	cert, err := submission.SelfSigned("mx.test")
	if err != nil {
		t.Fatal(err)
	}
	return hostileMX(t, func(c net.Conn, r *bufio.Reader) {
		m.conns.Add(1)
		fmt.Fprintf(c, "220 mx ESMTP like OpenSMTPD\r\n")
		identified, inTLS := false, false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.Fields(line + " x")[0]) {
			case "EHLO", "HELO":
				if identified {
					m.refused.Add(1)
					fmt.Fprintf(c, "503 5.5.1 Invalid command: Already identified\r\n")
					continue
				}
				identified = true
				ext := "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n"
				if withTLS && !inTLS {
					ext += "250-STARTTLS\r\n"
				}
				fmt.Fprintf(c, "250-mx Hello\r\n%s250 HELP\r\n", ext)
			case "STARTTLS":
				fmt.Fprintf(c, "220 2.0.0 Ready to start TLS\r\n")
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				if tc.Handshake() != nil {
					return
				}
				c, r, identified, inTLS = tc, bufio.NewReader(tc), false, true
			case "MAIL", "RCPT", "RSET", "NOOP":
				fmt.Fprintf(c, "250 2.0.0 Ok\r\n")
			case "DATA":
				fmt.Fprintf(c, "354 Enter mail, end with \".\" on a line by itself\r\n")
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if l == ".\r\n" {
						break
					}
				}
				m.delivered.Add(1)
				fmt.Fprintf(c, "250 2.0.0 Message accepted for delivery\r\n")
			case "QUIT":
				fmt.Fprintf(c, "221 2.0.0 Bye\r\n")
				return
			default:
				fmt.Fprintf(c, "500 5.5.1 Invalid command\r\n")
			}
		}
	})
}

// TestOneEHLOPerSession: Postern says EHLO once per session (and once more
// after STARTTLS, RFC 3207 4.2), including on a session reused after RSET.
// OpenSMTPD answers any other EHLO with 503 5.5.1, and Postern took that
// for a permanent failure and bounced the mail. go-smtp's client said EHLO
// again after the cleartext one, and again after every RSET. Found by the
// interop suite (interop/: may-no-tls, and a reused session, to OpenSMTPD).
func TestOneEHLOPerSession(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("starttls=%v", withTLS), func(t *testing.T) {
			mx := &strictEHLOMX{}
			w := newWorld(t, smtptest.Start(t, nil))
			w.engine.cfg.Port = mx.serve(t, withTLS)
			// Two messages one after the other: the second reuses the
			// session the first left in the pool.
			for i := 0; i < 2; i++ {
				w.submit(sender, "a@dest.test")
				w.run()
			}
			if b := w.bounces(); len(b) != 0 {
				t.Fatalf("bounced:\n%s", b[0])
			}
			if n := mx.refused.Load(); n != 0 {
				t.Fatalf("%d EHLO commands refused as repeated", n)
			}
			if mx.delivered.Load() != 2 || mx.conns.Load() != 1 {
				t.Fatalf("delivered %d messages over %d connections, want 2 over 1", mx.delivered.Load(), mx.conns.Load())
			}
		})
	}
}
