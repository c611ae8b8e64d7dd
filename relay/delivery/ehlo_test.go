package delivery

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/relay/smtptest"
)

// TestOneEHLOWithoutSTARTTLS: a session without STARTTLS says EHLO once.
// OpenSMTPD (6.8) answers a second EHLO with "503 5.5.1 Invalid command:
// Already identified"; Postern used to send one (go-smtp's client
// introducing itself again after the cleartext EHLO) and bounced the mail
// on that 5xx. Found by the interop suite (interop/, may-no-tls to
// OpenSMTPD).
func TestOneEHLOWithoutSTARTTLS(t *testing.T) {
	var ehlos, delivered atomic.Int32
	port := hostileMX(t, func(c net.Conn, r *bufio.Reader) {
		fmt.Fprintf(c, "220 mx ESMTP like OpenSMTPD\r\n")
		identified := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.Fields(line + " x")[0])
			switch cmd {
			case "EHLO", "HELO":
				ehlos.Add(1)
				if identified {
					fmt.Fprintf(c, "503 5.5.1 Invalid command: Already identified\r\n")
					continue
				}
				identified = true
				fmt.Fprintf(c, "250-mx Hello\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250 HELP\r\n")
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
				delivered.Add(1)
				fmt.Fprintf(c, "250 2.0.0 Message accepted for delivery\r\n")
			case "QUIT":
				fmt.Fprintf(c, "221 2.0.0 Bye\r\n")
				return
			default:
				fmt.Fprintf(c, "500 5.5.1 Invalid command\r\n")
			}
		}
	})
	w := newWorld(t, smtptest.Start(t, nil))
	w.engine.cfg.Port = port
	w.submit(sender, "a@dest.test")
	w.run()
	if b := w.bounces(); len(b) != 0 {
		t.Fatalf("bounced:\n%s", b[0])
	}
	if n := ehlos.Load(); n != 1 {
		t.Fatalf("%d EHLO commands in one cleartext session, want 1", n)
	}
	if delivered.Load() != 1 {
		t.Fatal("not delivered")
	}
}
