package delivery

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/tlspolicy"
)

// TestPooledSessionNeverCarriesAnotherRoutesCredentials: a session that
// authenticated with one route's credentials is kept for reuse; mail for
// another route to the same smarthost, with other credentials or none, must
// not ride on it (it would be relayed, and accounted, as the first route's
// user, which the operator never configured for that domain).
func TestPooledSessionNeverCarriesAnotherRoutesCredentials(t *testing.T) {
	mx := smtptest.Start(t, func(mx *smtptest.MX) { mx.Password = "hop-secret" })
	verify := tlspolicy.Verify
	w := newWorld(t, mx,
		Route{Match: ".a.example", Host: "127.0.0.1", Username: "relay", Password: "hop-secret"},
		Route{Match: ".b.example", Host: "127.0.0.1", TLS: &verify}) // no credentials for b
	w.engine.d.Roots = x509.NewCertPool()
	w.engine.d.Roots.AddCert(mx.Leaf)

	w.submit(sender, "x@mail.a.example")
	w.run()
	if got := mx.Received(); len(got) != 1 || got[0].User != "relay" {
		t.Fatalf("route a: smarthost got %+v", got)
	}
	w.submit(sender, "y@mail.b.example")
	w.run()
	for _, m := range mx.Received() {
		if len(m.Rcpts) > 0 && strings.HasSuffix(m.Rcpts[0], "b.example") && m.User != "" {
			t.Fatalf("mail for route b (no credentials) left authenticated as %q, on route a's pooled session (%d connections in all)",
				m.User, mx.Connections())
		}
	}
}

// TestRoutePinsAreNeverIgnored: a route that names tls_pins has said which
// key its next hop must hold. At tls: encrypt (with or without credentials
// and the auth_over_unverified_tls opt-in) or may, the pins are silently
// dropped today, so a next hop with any other key gets the mail, and the
// route's credentials.
func TestRoutePinsAreNeverIgnored(t *testing.T) {
	for _, tc := range []struct {
		name  string
		route Route
	}{
		{"encrypt", Route{TLS: level(tlspolicy.Encrypt)}},
		{"may", Route{TLS: level(tlspolicy.May)}},
		{"encrypt with credentials and the opt-in", Route{TLS: level(tlspolicy.Encrypt), Username: "relay", Password: "hop-secret", AuthOverUnverifiedTLS: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mx := smtptest.Start(t, func(mx *smtptest.MX) {
				if tc.route.Username != "" {
					mx.Password = "hop-secret"
				}
			})
			route := tc.route
			route.Match, route.Host = "*", "127.0.0.1"
			route.Pins = [][]byte{make([]byte, 32)} // not the smarthost's key
			w := newWorld(t, mx, route)
			id := w.submit(sender, "a@anywhere.example")
			w.run()
			if got := mx.Received(); len(got) != 0 || mx.AuthAttempts() != 0 {
				t.Fatalf("a next hop whose key is not pinned got %d messages (TLS %v) and %d AUTH attempts",
					len(got), len(got) > 0 && got[0].TLS, mx.AuthAttempts())
			}
			r := w.state(id).Recipients[0]
			if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "4.7.") {
				t.Fatalf("want a 4.7.x deferral, got %v %q", r.State, r.LastReply)
			}
		})
	}
}

// TestRouteAtMayKeepsTheDomainsLocalPolicy: the operator's tls.policies
// entry for a recipient domain (encrypt here) is a demand too. A route to a
// smarthost whose own tls is may must not make that domain's mail leave
// weaker: today the route's level replaces the entry, so a failed STARTTLS
// is retried in cleartext (the fallback the issue allows only where
// "nothing requires TLS for a destination ... local entry ... at may").
func TestRouteAtMayKeepsTheDomainsLocalPolicy(t *testing.T) {
	mx := smtptest.Start(t, func(mx *smtptest.MX) {
		mx.Server.TLSConfig = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("no certificate today")
		}}
	})
	w := newWorld(t, mx, Route{Match: "*", Host: "127.0.0.1", TLS: level(tlspolicy.May)})
	e, err := tlspolicy.NewEngine(tlspolicy.Config{Default: tlspolicy.ModeMay,
		Policies: []tlspolicy.Local{{Domain: "bank.example", Mode: tlspolicy.ModeEncrypt}}},
		tlspolicy.Deps{Resolver: w.engine.d.Resolver.(tlspolicy.Resolver), Clock: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	w.engine.d.Policy = e
	w.submit(sender, "ceo@bank.example")
	w.run()
	if got := mx.Received(); len(got) != 0 {
		t.Fatalf("mail for bank.example (tls.policies: encrypt) left in cleartext (TLS %v) through a route at may", got[0].TLS)
	}
}

// TestRouteDecisionExhaustive holds every combination of a route's own
// settings to what they demand, as the policy engine's exhaustive test
// does for published policies (that test never sees routeDecision):
// credentials only over verified TLS (or encrypt with the opt-in), pins
// always checked, REQUIRETLS verified, and never below the route's tls.
func TestRouteDecisionExhaustive(t *testing.T) {
	levels := []*tlspolicy.Level{nil, level(tlspolicy.None), level(tlspolicy.May), level(tlspolicy.Encrypt), level(tlspolicy.Verify)}
	n := 0
	for _, tls := range levels {
		for _, user := range []string{"", "relay"} {
			for _, optIn := range []bool{false, true} {
				for _, pinned := range []bool{false, true} {
					for _, requireTLS := range []bool{false, true} {
						r := Route{Match: "*", Host: "smarthost.example", Port: 587, TLS: tls, Username: user, AuthOverUnverifiedTLS: optIn}
						if user != "" {
							r.Password = "secret"
						}
						if pinned {
							r.Pins = [][]byte{make([]byte, 32)}
						}
						d := RouteDecision(r, nil, requireTLS)
						n++
						tlsName := "unset"
						if tls != nil {
							tlsName = tls.String()
						}
						name := fmt.Sprintf("tls=%s user=%q opt-in=%t pins=%t requiretls=%t: %s", tlsName, user, optIn, pinned, requireTLS, d.Describe())
						if tls != nil && d.Level < *tls {
							t.Errorf("%s: below the route's own level", name)
						}
						if user != "" && d.Level < tlspolicy.Verify && !(optIn && d.Level == tlspolicy.Encrypt) {
							t.Errorf("%s: credentials where TLS is not verified", name)
						}
						if requireTLS && d.Level < tlspolicy.Verify {
							t.Errorf("%s: REQUIRETLS without verified TLS", name)
						}
						if pinned && (d.Level != tlspolicy.Verify || !d.Pinned || len(d.TLSA) == 0) {
							t.Errorf("%s: the pinned key is not checked", name)
						}
						if d.AllowsCleartextRetry() && (user != "" || pinned || requireTLS || (tls != nil && *tls > tlspolicy.May)) {
							t.Errorf("%s: a cleartext retry where TLS is asked for", name)
						}
					}
				}
			}
		}
	}
	t.Logf("%d route combinations", n)
}

// TestFallbackSessionNeverBouncesForWantingTLS: the cleartext fallback is
// Postern's own last resort after a STARTTLS that failed (perhaps for a
// moment, perhaps because someone on the path broke it). A server that
// then answers "530 5.7.0 Must issue a STARTTLS command first" says it
// wants TLS, nothing about the message: the message must wait for a try
// in which TLS works, not bounce at once. Before the fallback existed
// this message waited (4.7.5); today it bounces on its first attempt.
func TestFallbackSessionNeverBouncesForWantingTLS(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	w.engine.d.Policy = tlspolicy.Fixed{Level: tlspolicy.May}
	var conns atomic.Int32
	w.engine.cfg.Port = hostileMX(t, func(c net.Conn, r *bufio.Reader) {
		first := conns.Add(1) == 1
		fmt.Fprintf(c, "220 mx ESMTP\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch cmd := strings.ToUpper(strings.TrimSpace(line)); {
			case strings.HasPrefix(cmd, "EHLO"):
				fmt.Fprintf(c, "250-mx\r\n250 STARTTLS\r\n")
			case cmd == "STARTTLS" && first:
				fmt.Fprintf(c, "220 go ahead\r\n")
				r.Read(make([]byte, 4096))            // the ClientHello
				fmt.Fprintf(c, "this is not TLS\r\n") // the handshake fails
				return
			case strings.HasPrefix(cmd, "MAIL"), strings.HasPrefix(cmd, "RCPT"), strings.HasPrefix(cmd, "DATA"):
				fmt.Fprintf(c, "530 5.7.0 Must issue a STARTTLS command first\r\n")
			case cmd == "QUIT":
				fmt.Fprintf(c, "221 bye\r\n")
				return
			default:
				fmt.Fprintf(c, "250 ok\r\n")
			}
		}
	})
	id := w.submit(sender, "a@dest.test")
	w.run()
	m, err := w.q.Get(id)
	if err != nil {
		evidence, _ := audit.Query(w.q, audit.Filter{RcptDomain: "dest.test"})
		t.Fatalf("the message is finished after a cleartext fallback the server refused for wanting TLS (%d connections): %v; audit: %+v", conns.Load(), err, evidence)
	}
	if r := m.Recipients[0]; r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "4.") {
		t.Fatalf("want a deferral, got %v %q", r.State, r.LastReply)
	}
}
