package delivery

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/resolver/resolvertest"
	"github.com/postern/postern/tlspolicy"
)

const testZone = `
dest.test.        300 IN MX 10 mx.dest.test.
mx.dest.test.     300 IN A 127.0.0.1
failover.test.    300 IN MX 10 down.failover.test.
failover.test.    300 IN MX 20 up.failover.test.
down.failover.test. 300 IN A 127.0.0.2
up.failover.test. 300 IN A 127.0.0.1
implicit.test.    300 IN A 127.0.0.1
nullmx.test.      300 IN MX 0 .
bounces.test.     300 IN MX 10 mx.dest.test.
`

// sender's domain routes to the fake MX too, so reports arrive where a real
// sender would find them.
const sender = "app@bounces.test"

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

type world struct {
	t      *testing.T
	q      *queue.Queue
	clock  *clock
	engine *Engine
	mx     *smtptest.MX
	dns    *resolvertest.Server
}

func newWorld(t *testing.T, mx *smtptest.MX, routes ...Route) *world {
	t.Helper()
	dns, anchors := resolvertest.StartSigned(t, testZone)
	res, _ := resolver.New([]string{dns.Addr}, resolver.Options{Timeout: time.Second, Attempts: 1, Anchors: anchors})
	return buildWorld(t, mx, dns, res, nil, nil, routes...)
}

// buildWorld makes a delivery engine over a fresh queue, with the given DNS
// and TLS policy (nil: opportunistic everywhere).
func buildWorld(t *testing.T, mx *smtptest.MX, dns *resolvertest.Server, res *resolver.Client, policy tlspolicy.Policy, log *slog.Logger, routes ...Route) *world {
	t.Helper()
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	q, err := queue.Open(filepath.Join(t.TempDir(), "queue.db"), queue.Options{Clock: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	for i := range routes {
		if routes[i].Port == 0 {
			routes[i].Port = mx.Port
		}
	}
	e := New(Config{Hostname: "relay.test", Port: mx.Port, Routes: routes, Workers: 2, LeaseTime: 10 * time.Minute,
		Retry: []time.Duration{time.Minute, 5 * time.Minute}, MaxQueueLifetime: 24 * time.Hour, DelayWarning: 4 * time.Hour,
		MaxAddrAttempts: 5, PollInterval: time.Second, ReuseCount: 3, ReuseIdle: time.Minute, MaxConnectionsPerDomain: 2},
		Deps{Queue: q, Resolver: res, Log: log, Clock: c.Now, Policy: policy,
			Jitter: func(d time.Duration) time.Duration { return d }, Shuffle: func([]resolver.MX) {}})
	return &world{t: t, q: q, clock: c, engine: e, mx: mx, dns: dns}
}

const body = "From: app@example.org\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n"

func (w *world) submit(from string, rcpts ...string) string {
	w.t.Helper()
	env := queue.Envelope{From: from, Return: "HDRS", EnvelopeID: "env7"}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Addr: r})
	}
	id, err := w.q.Enqueue("", env, strings.NewReader(body))
	if err != nil {
		w.t.Fatal(err)
	}
	return id
}

func (w *world) run() { w.engine.RunDue(context.Background()) }

// bounces returns the notices that reached senders at the fake MX.
func (w *world) bounces() []string {
	var out []string
	for _, m := range w.mx.Received() {
		if m.From == "" {
			out = append(out, m.Rcpts[0]+"\n"+string(m.Data))
		}
	}
	return out
}

func (w *world) state(id string) queue.Message {
	m, err := w.q.Get(id)
	if err != nil {
		w.t.Fatalf("message %s: %v", id, err)
	}
	return m
}

func TestDeliversOverSTARTTLS(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	id := w.submit(sender, "a@dest.test", "b@dest.test")
	w.run()
	got := w.mx.Received()
	if len(got) != 1 || len(got[0].Rcpts) != 2 || string(got[0].Data) != body || !got[0].TLS || got[0].From != sender {
		t.Fatalf("received %+v", got)
	}
	if _, err := w.q.Get(id); err == nil {
		t.Fatal("delivered message still queued")
	}
	if len(w.bounces()) != 0 {
		t.Fatal("bounce for a delivered message")
	}
}

func TestRouting(t *testing.T) {
	for _, domain := range []string{"failover.test", "implicit.test"} {
		t.Run(domain, func(t *testing.T) {
			w := newWorld(t, smtptest.Start(t, nil))
			w.submit(sender, "a@"+domain)
			w.run()
			if len(w.mx.Received()) != 1 {
				t.Fatalf("not delivered to %s", domain)
			}
		})
	}
}

func TestPermanentRoutingFailuresBounceAtOnce(t *testing.T) {
	for domain, status := range map[string]string{"nullmx.test": "5.1.10", "absent.test": "5.1.2"} {
		t.Run(domain, func(t *testing.T) {
			w := newWorld(t, smtptest.Start(t, nil))
			id := w.submit(sender, "a@"+domain)
			w.run()
			if _, err := w.q.Get(id); err == nil {
				t.Fatal("message kept for retry")
			}
			b := w.bounces()
			if len(b) != 1 || !strings.HasPrefix(b[0], sender+"\n") || !strings.Contains(b[0], "Status: "+status) ||
				!strings.Contains(b[0], "Final-Recipient: rfc822; a@"+domain) || !strings.Contains(b[0], "Original-Envelope-Id: env7") {
				t.Fatalf("bounce: %q", b)
			}
		})
	}
}

// TestUnprovenMXAnswersWait: an MX answer that cannot be validated (the
// upstream is diagnosed as stripping DNSSEC, so validation can tell
// neither way) is no proof: an NXDOMAIN or a null MX in it waits (4.4.3)
// instead of bouncing, and a real MX set in it is not delivered to, since
// it might be hiding DANE.
func TestUnprovenMXAnswersWait(t *testing.T) {
	for _, domain := range []string{"absent.test", "nullmx.test", "dest.test"} {
		t.Run(domain, func(t *testing.T) {
			w := newWorld(t, smtptest.Start(t, nil))
			w.engine.d.Resolver = indeterminateMX{w.engine.d.Resolver}
			id := w.submit(sender, "a@"+domain)
			w.run()
			m, err := w.q.Get(id)
			if err != nil {
				t.Fatalf("message gone: %v (bounces %q)", err, w.bounces())
			}
			r := m.Recipients[0]
			if r.State != queue.Pending || !strings.HasPrefix(r.LastReply, "4.4.3") || len(w.bounces()) != 0 || len(w.mx.Received()) != 0 {
				t.Fatalf("want a deferral 4.4.3 and nothing sent, got %v %q, %d bounces, %d delivered", r.State, r.LastReply, len(w.bounces()), len(w.mx.Received()))
			}
		})
	}
}

// indeterminateMX answers MX questions as validation does while the
// upstream strips DNSSEC.
type indeterminateMX struct{ resolver.Resolver }

func (r indeterminateMX) LookupMX(ctx context.Context, domain string) (resolver.MXAnswer, error) {
	a, err := r.Resolver.LookupMX(ctx, domain)
	a.Security, a.Reason = resolver.Indeterminate, "upstream strips DNSSEC"
	return a, err
}

func TestTemporaryFailureRetriedThenDelivered(t *testing.T) {
	attempts := 0
	mx := smtptest.Start(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(string) error {
			attempts++
			if attempts == 1 {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
			}
			return nil
		}
	})
	w := newWorld(t, mx)
	id := w.submit(sender, "a@dest.test")
	w.run()
	r := w.state(id).Recipients[0]
	if r.State != queue.Pending || r.Attempts != 1 || !strings.Contains(r.LastReply, "451") ||
		!r.Due.Equal(w.clock.Now().Add(time.Minute)) || r.LastHost != "mx.dest.test" {
		t.Fatalf("after 451: %+v", r)
	}
	w.clock.Advance(59 * time.Second)
	w.run()
	if attempts != 1 {
		t.Fatal("retried before its time")
	}
	w.clock.Advance(time.Second)
	w.run()
	if len(w.mx.Received()) != 1 {
		t.Fatal("not delivered on retry")
	}
}

func TestPartialFailureBouncesOnlyTheFailed(t *testing.T) {
	mx := smtptest.Start(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(rcpt string) error {
			if strings.HasPrefix(rcpt, "nobody@") && rcpt != sender {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}
	})
	w := newWorld(t, mx)
	w.submit(sender, "a@dest.test", "nobody@dest.test")
	w.run()
	if got := w.mx.Received(); len(got) != 2 || len(got[0].Rcpts) != 1 {
		t.Fatalf("received %+v", got)
	}
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Final-Recipient: rfc822; nobody@dest.test") ||
		strings.Contains(b[0], "Final-Recipient: rfc822; a@dest.test") || !strings.Contains(b[0], "Status: 5.1.1") ||
		!strings.Contains(b[0], "Remote-MTA: dns; mx.dest.test") || !strings.Contains(b[0], "Diagnostic-Code: smtp; 550 5.1.1 no such user") {
		t.Fatalf("bounce %q", b)
	}
	// RET=HDRS: the bounce carries the header section only.
	if !strings.Contains(b[0], "text/rfc822-headers") || strings.Contains(b[0], "hello\r\n.dot") {
		t.Fatalf("bounce returned the body despite RET=HDRS")
	}
}

func TestNullSenderIsNeverBounced(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	id := w.submit("", "a@nullmx.test")
	w.run()
	if _, err := w.q.Get(id); err == nil {
		t.Fatal("failed message kept")
	}
	if b := w.bounces(); len(b) != 0 {
		t.Fatalf("bounced a bounce: %q", b)
	}
}

func TestExpiryBouncesAndDelayWarning(t *testing.T) {
	mx := deferringMX(t)
	w := newWorld(t, mx)
	id := w.submit(sender, "a@dest.test")
	w.run()
	w.clock.Advance(5 * time.Hour) // past the 4h delay warning
	w.run()
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Action: delayed") || !strings.Contains(b[0], "Will-Retry-Until:") {
		t.Fatalf("delay warning: %q", b)
	}
	w.clock.Advance(6 * time.Hour)
	w.run() // no second warning
	if len(w.bounces()) != 1 {
		t.Fatal("delay warning repeated")
	}
	w.clock.Advance(14 * time.Hour) // past the 24h lifetime
	w.run()
	if _, err := w.q.Get(id); err == nil {
		t.Fatal("expired message kept")
	}
	b = w.bounces()
	if len(b) != 2 || !strings.Contains(b[1]+b[0], "Status: 4.4.7") || !strings.Contains(b[1]+b[0], "Action: failed") {
		t.Fatalf("expiry bounce: %q", b)
	}
}

func TestDSNParametersPassedOn(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	env := queue.Envelope{From: sender, Return: "HDRS", EnvelopeID: "env7",
		Recipients: []queue.Recipient{{Addr: "a@dest.test", Notify: []string{"FAILURE", "DELAY"}, Original: "rfc822;orig@dest.test"}}}
	w.q.Enqueue("", env, strings.NewReader(body))
	w.run()
	got := w.mx.Received()
	if len(got) != 1 {
		t.Fatal("not delivered")
	}
	m, r := got[0].Mail, got[0].RcptOpt[0]
	if m.Return != smtp.DSNReturnHeaders || m.EnvelopeID != "env7" || len(r.Notify) != 2 || r.OriginalRecipient != "orig@dest.test" {
		t.Fatalf("DSN parameters: mail %+v rcpt %+v", m, r)
	}
}

func TestSMTPUTF8Negotiation(t *testing.T) {
	for _, offered := range []bool{true, false} {
		mx := smtptest.Start(t, func(mx *smtptest.MX) { mx.Server.EnableSMTPUTF8 = offered })
		w := newWorld(t, mx)
		env := queue.Envelope{From: sender, UTF8: true, Recipients: []queue.Recipient{{Addr: "jörg@dest.test"}}}
		w.q.Enqueue("", env, strings.NewReader(body))
		w.run()
		delivered := len(w.mx.Received()) == 1 && w.mx.Received()[0].From != ""
		if delivered != offered {
			t.Fatalf("SMTPUTF8 offered=%v delivered=%v", offered, delivered)
		}
		if !offered {
			if b := w.bounces(); len(b) != 1 || !strings.Contains(b[0], "Status: 5.6.7") {
				t.Fatalf("no 5.6.7 bounce: %q", b)
			}
		}
	}
}

// TestSmarthostRouteWithAuth: a route's credentials go only to a next hop
// whose certificate was verified (PKIX against the configured roots, or a
// pinned key), or, where the operator opted in, over unverified TLS.
func TestSmarthostRouteWithAuth(t *testing.T) {
	encrypt := tlspolicy.Encrypt
	cases := []struct {
		name    string
		trusted bool   // the smarthost's certificate is among the roots
		pin     string // "right" or "wrong": pin the smarthost's key
		route   Route
		want    string // "delivered" or the deferral's reply prefix
	}{
		{name: "verified by the roots", trusted: true, want: "delivered"},
		{name: "certificate not trusted: no credentials sent", want: "4.7.5"},
		{name: "pinned public key, not trusted by the roots", pin: "right", want: "delivered"},
		{name: "wrong pin", pin: "wrong", want: "4.7.5"},
		{name: "encrypt without the opt-in still verifies", route: Route{TLS: &encrypt}, want: "4.7.5"},
		{name: "encrypt with auth_over_unverified_tls", route: Route{TLS: &encrypt, AuthOverUnverifiedTLS: true}, want: "delivered"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mx := smtptest.Start(t, func(mx *smtptest.MX) { mx.Password = "hop-secret" })
			route := tc.route
			route.Match, route.Host, route.Username, route.Password = "*", "127.0.0.1", "relay", "hop-secret"
			switch tc.pin {
			case "right":
				sum := sha256.Sum256(mx.Leaf.RawSubjectPublicKeyInfo)
				route.Pins = [][]byte{sum[:]}
			case "wrong":
				route.Pins = [][]byte{make([]byte, 32)}
			}
			w := newWorld(t, mx, route)
			if tc.trusted {
				w.engine.d.Roots = x509.NewCertPool()
				w.engine.d.Roots.AddCert(mx.Leaf)
			}
			id := w.submit(sender, "a@anywhere.example")
			w.run()
			got := w.mx.Received()
			if tc.want == "delivered" {
				if len(got) != 1 || got[0].User != "relay" || !got[0].TLS {
					t.Fatalf("smarthost got %+v; reply %q", got, w.state(id).Recipients[0].LastReply)
				}
				return
			}
			r := w.state(id).Recipients[0]
			if len(got) != 0 || r.State != queue.Pending || !strings.HasPrefix(r.LastReply, tc.want) {
				t.Fatalf("want a deferral %s, got %d messages and %v %q", tc.want, len(got), r.State, r.LastReply)
			}
			if mx.AuthAttempts() != 0 {
				t.Fatal("credentials were offered to an unverified next hop")
			}
		})
	}
}

func TestRouteSelection(t *testing.T) {
	routes := []Route{{Match: "*", Host: "any"}, {Match: ".example.com", Host: "suffix"}, {Match: "mail.example.com", Host: "exact"}}
	for domain, want := range map[string]string{"mail.example.com": "exact", "x.example.com": "suffix", "example.com": "any", "other.test": "any"} {
		if r, _ := routeFor(routes, domain); r.Host != want {
			t.Errorf("%s routed to %s, want %s", domain, r.Host, want)
		}
	}
	if _, ok := routeFor(routes[1:], "other.test"); ok {
		t.Error("route matched without a catch-all")
	}
}

// A route matches as a local TLS policy does (one function, mailname.Match):
// neither the case nor a trailing dot of the pattern decides.
func TestRouteMatchIgnoresCaseAndTrailingDot(t *testing.T) {
	routes := []Route{{Match: "Partner.Example.", Host: "exact"}, {Match: ".Example.COM", Host: "suffix"}}
	for domain, want := range map[string]string{"partner.example": "exact", "mail.example.com": "suffix"} {
		if r, ok := routeFor(routes, domain); !ok || r.Host != want {
			t.Errorf("%s routed to %q (%v), want %s", domain, r.Host, ok, want)
		}
	}
}

func TestConnectionReuse(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	for i := 0; i < 7; i++ {
		w.submit(sender, "a@dest.test")
	}
	w.run()
	if n := len(w.mx.Received()); n != 7 {
		t.Fatalf("%d of 7 delivered", n)
	}
	// ReuseCount 3: seven messages need three connections, not seven.
	if n := w.mx.Connections(); n != 3 {
		t.Fatalf("%d connections for 7 messages", n)
	}
	// A kept session that has gone idle too long is not used.
	w.clock.Advance(2 * time.Minute)
	w.submit(sender, "a@dest.test")
	w.run()
	if n := w.mx.Connections(); n != 4 {
		t.Fatalf("stale session reused: %d connections", n)
	}
}

func TestRequireTLSNeedsTheExtension(t *testing.T) {
	mx := smtptest.Start(t, func(mx *smtptest.MX) { mx.Server.EnableREQUIRETLS = false })
	w := newWorld(t, mx)
	env := queue.Envelope{From: sender, RequireTLS: true, Recipients: []queue.Recipient{{Addr: "a@dest.test"}}}
	w.q.Enqueue("", env, strings.NewReader(body))
	w.run()
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Status: 5.7.30") || strings.Contains(b[0], "hello\r\n") {
		t.Fatalf("REQUIRETLS to a hop without it: %q", b)
	}
}

func level(l tlspolicy.Level) *tlspolicy.Level { return &l }

// A route's TLS requirement is enforced: no cleartext, no unverified
// certificate where verify is asked; the message waits instead.
func TestRouteTLSRequirement(t *testing.T) {
	noTLS := func(mx *smtptest.MX) { mx.Server.TLSConfig = nil }
	cases := []struct {
		name      string
		configure func(*smtptest.MX)
		level     tlspolicy.Level
		trust     bool
		delivered bool
		reason    string
	}{
		{"may delivers in cleartext when STARTTLS is missing", noTLS, tlspolicy.May, false, true, ""},
		{"encrypt refuses cleartext", noTLS, tlspolicy.Encrypt, false, false, "4.7.4"},
		{"encrypt takes any certificate", nil, tlspolicy.Encrypt, false, true, ""},
		{"verify refuses an untrusted certificate", nil, tlspolicy.Verify, false, false, "4.7.5"},
		{"verify accepts a trusted certificate", nil, tlspolicy.Verify, true, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mx := smtptest.Start(t, c.configure)
			w := newWorld(t, mx, Route{Match: "*", Host: "127.0.0.1", TLS: level(c.level)})
			if c.trust {
				w.engine.d.Roots = x509.NewCertPool()
				w.engine.d.Roots.AddCert(mx.Leaf)
			}
			id := w.submit(sender, "a@anywhere.example")
			w.run()
			got := len(w.mx.Received()) > 0
			if got != c.delivered {
				t.Fatalf("delivered=%v, want %v", got, c.delivered)
			}
			if !c.delivered {
				r := w.state(id).Recipients[0]
				if r.State != queue.Pending || !strings.Contains(r.LastReply, c.reason) {
					t.Fatalf("recipient %+v, want deferred with %s", r, c.reason)
				}
			} else if c.level >= tlspolicy.Encrypt && !w.mx.Received()[0].TLS {
				t.Fatal("delivered without TLS")
			}
		})
	}
}

func TestDNSFailureDefersNeverBounces(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	w.dns.ServFail("dest.test")
	id := w.submit(sender, "a@dest.test")
	w.run()
	r := w.state(id).Recipients[0]
	if r.State != queue.Pending || !strings.Contains(r.LastReply, "4.4.3") {
		t.Fatalf("after SERVFAIL: %+v", r)
	}
	if len(w.bounces()) != 0 {
		t.Fatal("bounced on a DNS failure")
	}
}

func TestBogusDNSDefersAndDeliversNothing(t *testing.T) {
	for _, qtype := range []uint16{dns.TypeMX, dns.TypeA} {
		t.Run(dns.TypeToString[qtype], func(t *testing.T) {
			w := newWorld(t, smtptest.Start(t, nil))
			// An attacker on the path rewrites the answer; the signature no longer matches.
			w.dns.Tamper(func(q dns.Question, m *dns.Msg) {
				for _, rr := range m.Answer {
					switch rr := rr.(type) {
					case *dns.MX:
						if qtype == dns.TypeMX {
							rr.Preference++
						}
					case *dns.A:
						if qtype == dns.TypeA {
							rr.A = net.IPv4(127, 0, 0, 9)
						}
					}
				}
			})
			id := w.submit(sender, "a@dest.test")
			w.run()
			r := w.state(id).Recipients[0]
			if r.State != queue.Pending || !strings.Contains(r.LastReply, "4.7.5") || !strings.Contains(r.LastReply, "DNSSEC") {
				t.Fatalf("after a bogus %s answer: %+v", dns.TypeToString[qtype], r)
			}
			if len(w.mx.Received()) != 0 || len(w.bounces()) != 0 {
				t.Fatal("delivered or bounced on a bogus answer")
			}
		})
	}
}

// TestShutdownDrainsDeliveries: when Run's context ends, an attempt in
// flight finishes within the drain deadline and is recorded once; past the
// deadline it is cut off and its recipient goes back to the queue untried,
// due at once.
func TestShutdownDrainsDeliveries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		drain time.Duration
	}{{"finishes within the deadline", time.Minute}, {"cut off at the deadline", 50 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			inRcpt, release := make(chan struct{}, 1), make(chan struct{})
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(release) }) })
			mx := smtptest.Start(t, func(mx *smtptest.MX) {
				mx.RcptReply = func(string) error { inRcpt <- struct{}{}; <-release; return nil }
			})
			w := newWorld(t, mx)
			w.engine.cfg.DrainTimeout = tc.drain
			id := w.submit("app@example.org", "user@dest.test")
			ctx, cancel := context.WithCancel(context.Background())
			stopped := make(chan struct{})
			go func() { w.engine.Run(ctx); close(stopped) }()
			<-inRcpt // the transaction is under way
			cancel()
			if tc.drain == time.Minute {
				select {
				case <-stopped:
					t.Fatal("Run returned with an attempt in flight")
				case <-time.After(100 * time.Millisecond):
				}
				once.Do(func() { close(release) })
			}
			select {
			case <-stopped:
			case <-time.After(20 * time.Second):
				t.Fatal("Run did not return")
			}
			m, err := w.q.Get(id)
			if tc.drain == time.Minute {
				// Delivered, recorded, and retired (no notice was asked for).
				if !errors.Is(err, queue.ErrNotFound) || len(mx.Received()) != 1 {
					t.Fatalf("drained attempt: %v, %d at the MX", err, len(mx.Received()))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := m.Recipients[0]
			if r.State != queue.Pending || r.Attempts != 0 || r.LastReply != "" || r.Due.After(w.clock.Now()) {
				t.Fatalf("cut-off attempt not given back untried: %+v", r)
			}
			if len(mx.Received()) != 0 {
				t.Fatal("the cut-off message arrived")
			}
		})
	}
}

// TestDNSOutageDefersThenRecovers: with every upstream silent or answering
// garbage, mail is deferred (never bounced), and delivered at the next try
// once DNS is back.
func TestDNSOutageDefersThenRecovers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failure resolvertest.Failure
	}{{"silent", resolvertest.Silent}, {"garbage", resolvertest.Garbage}} {
		t.Run(tc.name, func(t *testing.T) {
			mx := smtptest.Start(t, nil)
			dnsSrv, anchors := resolvertest.StartSigned(t, testZone)
			// The resolver's clock is real time (the zones are signed for
			// now) moved on as far as the test moves the world's clock.
			var w *world
			var start time.Time
			res, _ := resolver.New([]string{dnsSrv.Addr}, resolver.Options{Timeout: 200 * time.Millisecond, Attempts: 2,
				Anchors: anchors, Clock: func() time.Time { return time.Now().Add(w.clock.Now().Sub(start)) }})
			w = buildWorld(t, mx, dnsSrv, res, nil, nil)
			start = w.clock.Now()
			dnsSrv.Fail(tc.failure)
			id := w.submit(sender, "a@dest.test")
			w.run()
			r := w.state(id).Recipients[0]
			if r.State != queue.Pending || r.Attempts != 1 || !strings.Contains(r.LastReply, "4.4.3") {
				t.Fatalf("during the outage: %+v", r)
			}
			if len(w.bounces()) != 0 || len(mx.Received()) != 0 {
				t.Fatal("bounced or delivered during a DNS outage")
			}
			dnsSrv.Fail(resolvertest.Healthy)
			w.clock.Advance(2 * time.Minute) // past the retry and the cached failure
			w.run()
			if _, err := w.q.Get(id); !errors.Is(err, queue.ErrNotFound) || len(mx.Received()) != 1 {
				t.Fatalf("after DNS returned: %v, %d delivered, %+v", err, len(mx.Received()), w.state(id).Recipients[0])
			}
		})
	}
}

// TestDeliveryTrace: a delivery makes one trace with spans for DNS, the
// TLS policy, the connection (TLS included) and the SMTP transaction, under
// a root span that carries the queue ID.
func TestDeliveryTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	t.Cleanup(func() { otel.SetTracerProvider(tracenoop.NewTracerProvider()) })
	w := newWorld(t, smtptest.Start(t, nil))
	id := w.submit(sender, "a@dest.test")
	w.run()
	spans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[s.Name()] = s
	}
	root, ok := spans["delivery"]
	if !ok {
		t.Fatalf("no delivery span among %v", spans)
	}
	if !slices.Contains(root.Attributes(), attribute.String("postern.queue_id", id)) {
		t.Errorf("delivery span attributes %v lack the queue ID", root.Attributes())
	}
	for _, name := range []string{"delivery.domain", "dns.mx", "tls.policy", "dns.address", "smtp.attempt", "connect", "smtp.transaction"} {
		s, ok := spans[name]
		if !ok {
			t.Errorf("no %s span", name)
			continue
		}
		if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("%s is not in the delivery's trace", name)
		}
	}
	if c := spans["connect"]; c != nil && !slices.Contains(c.Attributes(), attribute.String("postern.tls_version", "TLS 1.3")) {
		t.Errorf("connect span attributes %v lack the TLS version", c.Attributes())
	}
}
