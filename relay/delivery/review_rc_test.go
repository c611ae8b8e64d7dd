package delivery

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/relay/submission"
	"github.com/postern/postern/tlspolicy"
)

// TestSTARTTLSResponseInjection: bytes a server (or someone on the path)
// sends after "220 ready for TLS", before the handshake, arrive in
// cleartext and are never taken for replies said inside TLS (the
// CVE-2011-0411 kind). Here they would answer the EHLO said inside TLS,
// and shift every later reply by one.
func TestSTARTTLSResponseInjection(t *testing.T) {
	cert, err := submission.SelfSigned("mx.test")
	if err != nil {
		t.Fatal(err)
	}
	var delivered, cleartextCmds atomic.Int32
	port := hostileMX(t, func(c net.Conn, r *bufio.Reader) {
		fmt.Fprintf(c, "220 mx ESMTP\r\n")
		inTLS := false
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.Fields(line + " x")[0])
			if !inTLS && cmd != "EHLO" && cmd != "STARTTLS" {
				cleartextCmds.Add(1)
			}
			switch cmd {
			case "EHLO":
				if inTLS {
					fmt.Fprintf(c, "250-mx\r\n250 ENHANCEDSTATUSCODES\r\n")
				} else {
					fmt.Fprintf(c, "250-mx\r\n250 STARTTLS\r\n")
				}
			case "STARTTLS":
				// The injection: replies in the same cleartext write.
				fmt.Fprintf(c, "220 2.0.0 go ahead\r\n250 injected\r\n250 injected\r\n250 injected\r\n")
				tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
				if tc.Handshake() != nil {
					return
				}
				c, r, inTLS = tc, bufio.NewReader(tc), true
			case "MAIL", "RCPT", "RSET":
				fmt.Fprintf(c, "250 2.0.0 ok\r\n")
			case "DATA":
				fmt.Fprintf(c, "354 go on\r\n")
				if _, err := readDotted(r); err != nil {
					return
				}
				delivered.Add(1)
				fmt.Fprintf(c, "250 2.0.0 queued\r\n")
			case "QUIT":
				fmt.Fprintf(c, "221 bye\r\n")
				return
			default:
				fmt.Fprintf(c, "500 5.5.1 what\r\n")
			}
		}
	})
	w := newWorld(t, smtptest.Start(t, nil))
	w.engine.d.Policy = tlspolicy.Fixed{Level: tlspolicy.Encrypt}
	w.engine.cfg.Port = port
	t.Cleanup(w.engine.conns.closeAll) // the kept session ends before its server is waited for
	w.engine.cfg.Timeouts = Timeouts{Connect: time.Second, Greeting: 2 * time.Second, Command: 2 * time.Second,
		Block: 2 * time.Second, FinalDot: 2 * time.Second}
	id := w.submit(sender, "a@dest.test")
	w.run()
	if n := cleartextCmds.Load(); n != 0 {
		t.Fatalf("%d commands in cleartext", n)
	}
	if delivered.Load() != 1 {
		t.Fatalf("not delivered: %+v", w.state(id).Recipients[0])
	}
}

// TestStrayReplyNeverFailsTheNextMessage: a next hop that answers the end
// of data twice left a reply in the pooled session, which the next
// message's pipelined RSET took for its own; every reply after it was
// read as the one before, and DATA as refused with the last recipient's
// 550, so the next message failed for good for every recipient, one the
// server had accepted included. The session is given up instead, and the
// next message goes on a new one: each recipient gets its own reply.
func TestStrayReplyNeverFailsTheNextMessage(t *testing.T) {
	var conns atomic.Int32
	port := hostileMX(t, func(c net.Conn, r *bufio.Reader) {
		first := conns.Add(1) == 1
		fmt.Fprintf(c, "220 mx ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.Fields(line + " x")[0]) {
			case "EHLO":
				fmt.Fprintf(c, "250-mx\r\n250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n")
			case "MAIL", "RSET":
				fmt.Fprintf(c, "250 2.0.0 ok\r\n")
			case "RCPT":
				if strings.Contains(line, "gone@") {
					fmt.Fprintf(c, "550 5.1.1 no such user\r\n")
				} else {
					fmt.Fprintf(c, "250 2.1.5 ok\r\n")
				}
			case "DATA":
				fmt.Fprintf(c, "354 go on\r\n")
				if _, err := readDotted(r); err != nil {
					return
				}
				if first {
					fmt.Fprintf(c, "250 2.0.0 queued\r\n250 2.0.0 queued again\r\n")
					first = false
				} else {
					fmt.Fprintf(c, "250 2.0.0 queued\r\n")
				}
			case "QUIT":
				fmt.Fprintf(c, "221 bye\r\n")
				return
			}
		}
	})
	w := newWorld(t, smtptest.Start(t, nil))
	w.engine.cfg.Port = port
	t.Cleanup(w.engine.conns.closeAll) // the kept session ends before its server is waited for
	w.submit(sender, "a@dest.test")
	w.run()
	w.submit(sender, "b@dest.test", "gone@dest.test")
	w.run()
	b, gone := w.final("b@dest.test"), w.final("gone@dest.test")
	if b.Result != "delivered" || gone.Result != "bounced" || !strings.Contains(gone.Reply, "5.1.1") {
		t.Fatalf("want b@ delivered and gone@ bounced with its own 550:\nb@: %s %s\ngone@: %s %s",
			b.Result, b.Reply, gone.Result, gone.Reply)
	}
}
