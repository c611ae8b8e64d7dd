package delivery

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/tlspolicy"
)

// TestOpportunisticFallback: where nothing requires TLS (RFC 7435), a
// STARTTLS that fails is retried once in cleartext on a new connection,
// and the delivery says so in the log, the audit trail and the downgrade
// memory; wherever something requires TLS, the message waits instead.
func TestOpportunisticFallback(t *testing.T) {
	brokenTLS := func(mx *smtptest.MX) {
		mx.Server.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("no certificate today")
		}}
	}
	cases := []struct {
		name      string
		policy    func(t *testing.T, w *world) tlspolicy.Policy
		delivered bool
	}{
		{"may: cleartext after the handshake fails", func(*testing.T, *world) tlspolicy.Policy { return tlspolicy.Fixed{Level: tlspolicy.May} }, true},
		{"encrypt: waits", func(*testing.T, *world) tlspolicy.Policy { return tlspolicy.Fixed{Level: tlspolicy.Encrypt} }, false},
		{"may, but the downgrade memory (defer) has seen TLS: waits", func(t *testing.T, w *world) tlspolicy.Policy {
			return memoryEngine(t, w, tlspolicy.MemoryDefer)
		}, false},
		{"may, the downgrade memory warns: cleartext, and the downgrade is noticed", func(t *testing.T, w *world) tlspolicy.Policy {
			return memoryEngine(t, w, tlspolicy.MemoryWarn)
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log := &syncBuffer{}
			w := newWorldLogging(t, smtptest.Start(t, brokenTLS), log)
			w.engine.d.Policy = tc.policy(t, w)
			id := w.submit(sender, "a@dest.test")
			w.run()
			got := w.mx.Received()
			if !tc.delivered {
				r := w.state(id).Recipients[0]
				if len(got) != 0 || r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "4.7.5") {
					t.Fatalf("want a deferral 4.7.5, got %d messages, %v %q", len(got), r.State, r.LastReply)
				}
				if strings.Contains(log.String(), "retrying in cleartext") {
					t.Fatal("fell back to cleartext where TLS was required")
				}
				return
			}
			if len(got) != 1 || got[0].TLS {
				t.Fatalf("want one message in cleartext, got %+v; log:\n%s", got, log.String())
			}
			if !strings.Contains(log.String(), "retrying in cleartext") {
				t.Errorf("the fallback is not logged:\n%s", log.String())
			}
			evidence, err := audit.Query(w.q, audit.Filter{RcptDomain: "dest.test"})
			if err != nil || len(evidence) != 1 || evidence[0].TLSFallback == "" || evidence[0].TLSVersion != "" || evidence[0].Verified {
				t.Fatalf("the audit record does not show the fallback: %+v %v", evidence, err)
			}
			if e, ok := w.engine.d.Policy.(*tlspolicy.Engine); ok {
				if m, _ := e.Memory("dest.test"); m.Best != tlspolicy.SeenEncrypted || !strings.Contains(log.String(), "TLS downgrade") {
					t.Errorf("the downgrade memory did not notice the cleartext delivery: %+v", m)
				}
			}
		})
	}
}

// newWorldLogging is newWorld with the engine's log kept.
func newWorldLogging(t *testing.T, mx *smtptest.MX, log *syncBuffer) *world {
	w := newWorld(t, mx)
	w.engine.d.Log = slog.New(slog.NewTextHandler(log, nil))
	return w
}

// memoryEngine is a policy engine at tls.default may whose downgrade
// memory has seen dest.test with TLS.
func memoryEngine(t *testing.T, w *world, mode tlspolicy.MemoryMode) *tlspolicy.Engine {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e, err := tlspolicy.NewEngine(tlspolicy.Config{Default: tlspolicy.ModeMay, DowngradeMemory: mode},
		tlspolicy.Deps{Resolver: w.engine.d.Resolver.(tlspolicy.Resolver), DB: db, Clock: w.clock.Now, Log: w.engine.d.Log})
	if err != nil {
		t.Fatal(err)
	}
	e.Observe(context.Background(), "dest.test", tlspolicy.SeenEncrypted)
	return e
}

// TestRefusedSTARTTLS: a server that refuses STARTTLS, even with a 5xx
// code, never makes the message bounce; at "may" the message goes in
// cleartext on a new connection.
func TestRefusedSTARTTLS(t *testing.T) {
	for _, level := range []tlspolicy.Level{tlspolicy.May, tlspolicy.Encrypt} {
		t.Run(level.String(), func(t *testing.T) {
			w := newWorld(t, smtptest.Start(t, nil))
			w.engine.d.Policy = tlspolicy.Fixed{Level: level}
			w.engine.cfg.Timeouts = Timeouts{Connect: 5 * time.Second, Greeting: 5 * time.Second, Command: 5 * time.Second,
				Block: 5 * time.Second, FinalDot: 5 * time.Second} // a script that goes wrong fails, not hangs
			var conns, delivered atomic.Int32
			w.engine.cfg.Port = hostileMX(t, func(c net.Conn, r *bufio.Reader) {
				first := conns.Add(1) == 1
				fmt.Fprintf(c, "220 mx ESMTP\r\n")
				expect(r, "EHLO")
				fmt.Fprintf(c, "250-mx\r\n250 STARTTLS\r\n")
				if first {
					expect(r, "STARTTLS")
					fmt.Fprintf(c, "554 5.7.0 no TLS for you\r\n")
					return
				}
				for _, step := range []string{"MAIL", "RCPT", "DATA"} { // one EHLO per session
					line, _ := r.ReadString('\n')
					if !strings.HasPrefix(strings.ToUpper(line), step) {
						fmt.Fprintf(c, "503 5.5.1 expected %s, got %q\r\n", step, line)
						return
					}
					if step == "DATA" {
						fmt.Fprintf(c, "354 go on\r\n")
					} else {
						fmt.Fprintf(c, "250 ok\r\n")
					}
				}
				for line, _ := r.ReadString('\n'); line != ".\r\n" && line != ""; line, _ = r.ReadString('\n') {
				}
				delivered.Add(1)
				fmt.Fprintf(c, "250 2.0.0 queued\r\n")
				expect(r, "QUIT")
				fmt.Fprintf(c, "221 bye\r\n")
			})
			id := w.submit(sender, "a@dest.test")
			w.run()
			if len(w.bounces()) != 0 {
				t.Fatal("bounced")
			}
			switch level {
			case tlspolicy.May:
				if delivered.Load() != 1 {
					t.Fatalf("not delivered in cleartext: %+v", w.state(id))
				}
			default:
				r := w.state(id).Recipients[0]
				if delivered.Load() != 0 || r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "4.7.4") {
					t.Fatalf("want a deferral 4.7.4: %v %q", r.State, r.LastReply)
				}
			}
		})
	}
}
