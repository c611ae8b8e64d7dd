package resolver_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/resolver/resolvertest"
)

// hierarchy is a signed DNS tree under the test's own root key:
//
//	.                  ECDSA P-256, NSEC
//	test.              RSA/SHA-256, NSEC3 with opt-out
//	secure.test.       ECDSA P-256, NSEC (sub.secure.test. delegated unsigned)
//	ed.test.           Ed25519, NSEC3
//	insecure.test.     unsigned, no DS (inside test.'s opt-out span)
//	expired.test.      signatures expired yesterday
//	future.test.       signatures valid from tomorrow
//	rekeyed.test.      its key no longer matches the DS in test.
//	sha1.test.         RSA/SHA-1 only: an algorithm Postern does not validate
type hierarchy struct {
	srv                             *resolvertest.Server
	root, tld, secure, ed, insecure *resolvertest.Zone
}

func newHierarchy(t testing.TB) *hierarchy {
	t.Helper()
	h := &hierarchy{}
	h.root = resolvertest.NewZone(t, ".", dns.ECDSAP256SHA256, "")
	h.tld = resolvertest.NewZone(t, "test.", dns.RSASHA256, "", resolvertest.WithNSEC3(0, true))
	var big strings.Builder
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&big, "big TXT \"a rather long text record, number %02d, to overflow one UDP answer\"\n", i)
	}
	h.secure = resolvertest.NewZone(t, "secure.test.", dns.ECDSAP256SHA256, `
@                  MX   10 mx
mx                 A    192.0.2.1
mx                 AAAA 2001:db8::1
_25._tcp.mx        TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
*.wild             A    192.0.2.7
alias              CNAME mx.ed.test.
toinsecure         CNAME host.insecure.test.
dname              DNAME ed.test.
`+big.String())
	sub := resolvertest.NewZone(t, "sub.secure.test.", 0, "@ MX 10 mx\nmx A 192.0.2.10")
	h.ed = resolvertest.NewZone(t, "ed.test.", dns.ED25519, `
@       MX 10 mx
mx      A  192.0.2.2
www     A  192.0.2.9
*.wild  A  192.0.2.8
`, resolvertest.WithNSEC3(0, false))
	h.insecure = resolvertest.NewZone(t, "insecure.test.", 0, "@ MX 10 mx\nmx A 192.0.2.4\nhost A 192.0.2.5")
	day := 24 * time.Hour
	expired := resolvertest.NewZone(t, "expired.test.", dns.ECDSAP256SHA256, "@ MX 10 mx\nmx A 192.0.2.11",
		resolvertest.WithValidity(time.Now().Add(-30*day), time.Now().Add(-day)))
	future := resolvertest.NewZone(t, "future.test.", dns.ECDSAP256SHA256, "@ MX 10 mx\nmx A 192.0.2.12",
		resolvertest.WithValidity(time.Now().Add(day), time.Now().Add(30*day)))
	rekeyed := resolvertest.NewZone(t, "rekeyed.test.", dns.ECDSAP256SHA256, "@ MX 10 mx\nmx A 192.0.2.13")
	sha1 := resolvertest.NewZone(t, "sha1.test.", dns.RSASHA1, "@ MX 10 mx\nmx A 192.0.2.14")
	h.root.Delegate(h.tld)
	for _, z := range []*resolvertest.Zone{h.secure, h.ed, h.insecure, expired, future, rekeyed, sha1} {
		h.tld.Delegate(z)
	}
	h.secure.Delegate(sub)
	rekeyed.Rekey()
	h.srv = resolvertest.StartZones(t, h.root, h.tld, h.secure, sub, h.ed, h.insecure, expired, future, rekeyed, sha1)
	return h
}

func (h *hierarchy) client(t testing.TB, opts resolver.Options) *resolver.Client {
	t.Helper()
	if opts.Anchors == nil {
		opts.Anchors = h.root.DS()
	}
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	opts.Attempts = 1
	c, err := resolver.New([]string{h.srv.Addr}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestValidation(t *testing.T) {
	h := newHierarchy(t)
	cases := []struct {
		name     string
		qname    string
		qtype    uint16
		security resolver.Security
		records  int
		nxdomain bool
		reason   string // part of the reason, for answers that are not Secure
	}{
		{"secure answer, ECDSA and NSEC", "secure.test", dns.TypeMX, resolver.Secure, 1, false, ""},
		{"secure answer, Ed25519", "mx.ed.test", dns.TypeA, resolver.Secure, 1, false, ""},
		{"secure TLSA", "_25._tcp.mx.secure.test", dns.TypeTLSA, resolver.Secure, 1, false, ""},
		{"NXDOMAIN under NSEC", "nope.secure.test", dns.TypeA, resolver.Secure, 0, true, ""},
		{"NODATA under NSEC", "mx.secure.test", dns.TypeTXT, resolver.Secure, 0, false, ""},
		{"empty non-terminal under NSEC", "_tcp.mx.secure.test", dns.TypeTXT, resolver.Secure, 0, false, ""},
		{"NXDOMAIN under NSEC3", "nope.ed.test", dns.TypeMX, resolver.Secure, 0, true, ""},
		{"NODATA under NSEC3", "mx.ed.test", dns.TypeTXT, resolver.Secure, 0, false, ""},
		{"TLSA securely absent under NSEC3", "_25._tcp.mx.ed.test", dns.TypeTLSA, resolver.Secure, 0, true, ""},
		{"wildcard under NSEC", "anything.wild.secure.test", dns.TypeA, resolver.Secure, 1, false, ""},
		{"wildcard under NSEC3", "anything.wild.ed.test", dns.TypeA, resolver.Secure, 1, false, ""},
		{"wildcard NODATA", "anything.wild.secure.test", dns.TypeMX, resolver.Secure, 0, false, ""},
		{"CNAME across signed zones", "alias.secure.test", dns.TypeA, resolver.Secure, 1, false, ""},
		{"DNAME into another zone", "www.dname.secure.test", dns.TypeA, resolver.Secure, 1, false, ""},
		{"truncated answer fetched over TCP", "big.secure.test", dns.TypeTXT, resolver.Secure, 40, false, ""},
		{"insecure delegation by NSEC3 opt-out", "insecure.test", dns.TypeMX, resolver.Insecure, 1, false, "opt-out"},
		{"insecure delegation by NSEC", "sub.secure.test", dns.TypeMX, resolver.Insecure, 1, false, "insecure delegation"},
		{"CNAME into an insecure zone", "toinsecure.secure.test", dns.TypeA, resolver.Insecure, 1, false, "opt-out"},
		{"unsupported algorithm is Insecure, not Bogus", "sha1.test", dns.TypeMX, resolver.Insecure, 1, false, "unsupported"},
		{"expired RRSIG", "expired.test", dns.TypeMX, resolver.Bogus, 1, false, "expired"},
		{"RRSIG not yet valid", "future.test", dns.TypeMX, resolver.Bogus, 1, false, "not valid before"},
		{"DS matching no key", "rekeyed.test", dns.TypeMX, resolver.Bogus, 1, false, "matches its DS"},
	}
	c := h.client(t, resolver.Options{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, err := c.Lookup(context.Background(), tc.qname, tc.qtype)
			if err != nil {
				t.Fatal(err)
			}
			if a.Security != tc.security || len(a.Records) != tc.records || a.NXDomain != tc.nxdomain {
				t.Fatalf("got %s, %d records, nxdomain %v (reason %q); want %s, %d, %v\nproof:\n%s",
					a.Security, len(a.Records), a.NXDomain, a.Reason, tc.security, tc.records, tc.nxdomain, strings.Join(a.Proof, "\n"))
			}
			if !strings.Contains(a.Reason, tc.reason) {
				t.Fatalf("reason %q does not mention %q", a.Reason, tc.reason)
			}
			if tc.security == resolver.Secure && len(a.Proof) == 0 {
				t.Fatal("a Secure answer without its chain")
			}
		})
	}
	t.Run("the chain is reported", func(t *testing.T) {
		a, _ := c.Lookup(context.Background(), "alias.secure.test", dns.TypeA)
		proof := strings.Join(a.Proof, "\n")
		for _, want := range []string{". DNSKEY set signed by key", "test. DS", "secure.test. DNSKEY", "ed.test. DNSKEY", "alias.secure.test. CNAME signed by secure.test.", "mx.ed.test. A signed by ed.test."} {
			if !strings.Contains(proof, want) {
				t.Errorf("proof lacks %q:\n%s", want, proof)
			}
		}
		if fmt.Sprint(a.Aliases) != "[mx.ed.test.]" || a.Target() != "mx.ed.test." {
			t.Errorf("aliases %v", a.Aliases)
		}
	})
}

// TestAttacks tampers with answers on the way, as an attacker between
// Postern and its upstream (or a broken upstream) would: each is Bogus.
func TestAttacks(t *testing.T) {
	h := newHierarchy(t)
	forgedNSEC3 := func(m *dns.Msg) {
		for i, rr := range m.Ns {
			if n, ok := rr.(*dns.NSEC3); ok {
				n = dns.Copy(n).(*dns.NSEC3)
				n.NextDomain = strings.Repeat("V", 32) // a span that covers everything
				m.Ns[i] = n
			}
		}
	}
	forgedOptOut := optOutProof(t, h, "ed.test.")
	cases := []struct {
		name   string
		qname  string
		qtype  uint16
		tamper func(q dns.Question, m *dns.Msg)
		reason string
	}{
		{"stripped RRSIGs", "secure.test", dns.TypeMX, func(q dns.Question, m *dns.Msg) {
			if q.Qtype == dns.TypeMX {
				m.Answer = without(m.Answer, dns.TypeRRSIG)
			}
		}, "no RRSIG"},
		{"stripped denial proof", "nope.secure.test", dns.TypeA, func(q dns.Question, m *dns.Msg) {
			if q.Qtype == dns.TypeA {
				m.Ns = without(without(m.Ns, dns.TypeNSEC), dns.TypeRRSIG)
			}
		}, "no valid proof"},
		{"wrong signer", "mx.ed.test", dns.TypeA, func(q dns.Question, m *dns.Msg) {
			if q.Qtype == dns.TypeA {
				rrs := without(m.Answer, dns.TypeRRSIG)
				m.Answer = append(rrs, h.secure.Sign(rrs)) // a valid signature, by the wrong zone
			}
		}, "not by the zone ed.test."},
		{"DNSKEY missing", "secure.test", dns.TypeMX, func(q dns.Question, m *dns.Msg) {
			if q.Qtype == dns.TypeDNSKEY && q.Name == "secure.test." {
				m.Answer = nil
			}
		}, "no DNSKEY"},
		{"forged NSEC3 proof", "nope.ed.test", dns.TypeMX, func(q dns.Question, m *dns.Msg) {
			if q.Qtype == dns.TypeMX {
				forgedNSEC3(m)
			}
		}, "does not verify"},
		{"forged insecure delegation", "ed.test", dns.TypeMX, func(q dns.Question, m *dns.Msg) {
			if q.Qtype == dns.TypeDS && q.Name == "ed.test." {
				// Pretend ed.test. is unsigned: drop its DS and answer with a
				// real opt-out NSEC3 proof of test., its span stretched to
				// cover ed.test. (the RRSIGs are test.'s own, copied).
				m.Answer, m.Ns = nil, forgedOptOut
			}
		}, "no valid proof that ed.test. has no DS"},
		{"forged data with a copied signature", "secure.test", dns.TypeMX, func(q dns.Question, m *dns.Msg) {
			for _, rr := range m.Answer {
				if mx, ok := rr.(*dns.MX); ok {
					mx.Mx = "evil.example."
				}
			}
		}, "does not verify"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.srv.Tamper(tc.tamper)
			defer h.srv.Tamper(nil)
			c := h.client(t, resolver.Options{})
			a, err := c.Lookup(context.Background(), tc.qname, tc.qtype)
			if err != nil {
				t.Fatal(err)
			}
			if a.Security != resolver.Bogus || !strings.Contains(a.Reason, tc.reason) {
				t.Fatalf("got %s (%q), want bogus mentioning %q", a.Security, a.Reason, tc.reason)
			}
		})
	}
}

// optOutProof returns test.'s genuine, signed answer to "insecure.test.
// DS" (insecure.test. sits in an opt-out span), with the covering NSEC3
// stretched to cover every hash but its own, name's included: a proof that
// name is an unsigned delegation, valid in every respect but its signature.
func optOutProof(t *testing.T, h *hierarchy, name string) []dns.RR {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion("insecure.test.", dns.TypeDS)
	q.SetEdns0(1232, true)
	resp, err := dns.Exchange(q, h.srv.Addr)
	if err != nil {
		t.Error(err)
		return nil
	}
	var out []dns.RR
	stretched := false
	for _, rr := range resp.Ns {
		if n, ok := rr.(*dns.NSEC3); ok && n.Flags&1 == 1 && n.Cover("insecure.test.") {
			n = dns.Copy(n).(*dns.NSEC3)
			// NextDomain equal to the owner's hash: a span covering
			// every other hash in the zone.
			n.NextDomain = strings.ToUpper(strings.SplitN(n.Hdr.Name, ".", 2)[0])
			if !n.Cover(name) {
				t.Errorf("the stretched NSEC3 does not cover %s", name)
			}
			rr, stretched = n, true
		}
		out = append(out, rr)
	}
	if !stretched {
		t.Errorf("no opt-out NSEC3 covering insecure.test. in %v", resp.Ns)
	}
	return out
}

func without(rrs []dns.RR, rrtype uint16) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype != rrtype {
			out = append(out, rr)
		}
	}
	return out
}

func TestModes(t *testing.T) {
	h := newHierarchy(t)
	ctx := context.Background()
	off := h.client(t, resolver.Options{Mode: resolver.Off})
	if a, err := off.Lookup(ctx, "expired.test", dns.TypeMX); err != nil || a.Security != resolver.Insecure || len(a.Records) != 1 {
		t.Fatalf("off: %+v %v", a, err)
	}
	if _, err := resolver.New([]string{"192.0.2.53"}, resolver.Options{Mode: resolver.TrustAD}); err == nil || !strings.Contains(err.Error(), "dns.trust_ad_remote") {
		t.Fatalf("trust-ad with a remote resolver: %v", err)
	}
	if _, err := resolver.New([]string{"192.0.2.53"}, resolver.Options{Mode: resolver.TrustAD, TrustADRemote: true}); err != nil {
		t.Fatal(err)
	}
	ad := h.client(t, resolver.Options{Mode: resolver.TrustAD})
	h.srv.Tamper(func(q dns.Question, m *dns.Msg) { m.AuthenticatedData = q.Name == "secure.test." })
	defer h.srv.Tamper(nil)
	if a, _ := ad.Lookup(ctx, "secure.test", dns.TypeMX); a.Security != resolver.Secure {
		t.Fatalf("trust-ad with AD: %s", a.Security)
	}
	if a, _ := ad.Lookup(ctx, "ed.test", dns.TypeMX); a.Security != resolver.Insecure {
		t.Fatalf("trust-ad without AD: %s", a.Security)
	}
	// An anchor that covers only test. leaves other names Insecure (nothing
	// can be proven of them), and the probe asks for the anchored zone's keys.
	partial := h.client(t, resolver.Options{Anchors: h.tld.DS()})
	if health := partial.Probe(ctx); health.Broken {
		t.Fatalf("probe with an anchor at test.: %s", health.Problem)
	}
	before := len(h.srv.Asked())
	partial.Probe(ctx)
	for _, q := range h.srv.Asked()[before:] {
		if q.Name != "test." || q.Qtype != dns.TypeDNSKEY {
			t.Fatalf("the probe asked %v", q)
		}
	}
	if a, _ := partial.Lookup(ctx, "secure.test", dns.TypeMX); a.Security != resolver.Secure {
		t.Fatalf("anchored at test.: %s %s", a.Security, a.Reason)
	}
	h.srv.Tamper(nil)
	if a, _ := partial.Lookup(ctx, "example.", dns.TypeMX); a.Security != resolver.Insecure {
		t.Fatalf("outside every anchor: %s %s", a.Security, a.Reason)
	}
}

// Issue 15, item 7, validated: the end of a chain that the upstream cut
// short is asked for again and validated, instead of being judged Bogus
// for want of a denial proof the upstream never sent.
func TestCutShortAliasChainValidated(t *testing.T) {
	h := newHierarchy(t)
	h.srv.CutChains(1)
	c := h.client(t, resolver.Options{})
	ctx := context.Background()
	cases := []struct {
		qname    string
		qtype    uint16
		security resolver.Security
		records  int
	}{
		{"alias.secure.test", dns.TypeA, resolver.Secure, 1},
		{"alias.secure.test", dns.TypeTXT, resolver.Secure, 0},      // a proven NODATA at the end
		{"toinsecure.secure.test", dns.TypeA, resolver.Insecure, 1}, // into an insecure zone
		{"www.dname.secure.test", dns.TypeA, resolver.Secure, 1},    // through a DNAME
	}
	for _, tc := range cases {
		a, err := c.Lookup(ctx, tc.qname, tc.qtype)
		if err != nil || a.Security != tc.security || len(a.Records) != tc.records || a.NXDomain || len(a.Aliases) != 1 {
			t.Errorf("%s %s: %+v %v", tc.qname, dns.TypeToString[tc.qtype], a, err)
		}
	}
}

// logBuffer collects what a client logs, for assertions on it.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Issue 14, item 1: "the upstream breaks DNSSEC" is a sustained, specific
// diagnosis (DNSSEC records missing from the anchor zone's DNSKEY answer,
// probe after probe), and only it lowers Bogus answers.
func TestBrokenUpstreamIsASustainedDiagnosis(t *testing.T) {
	h := newHierarchy(t)
	ctx := context.Background()
	var logs logBuffer
	c := h.client(t, resolver.Options{Log: logs.logger()})
	if health := c.Probe(ctx); health.Broken {
		t.Fatalf("healthy upstream reported broken: %s", health.Problem)
	}
	// An upstream that drops every RRSIG, as some home routers and
	// middleboxes do.
	h.srv.Tamper(func(q dns.Question, m *dns.Msg) {
		m.Answer, m.Ns = without(m.Answer, dns.TypeRRSIG), without(m.Ns, dns.TypeRRSIG)
	})
	defer h.srv.Tamper(nil)
	for i := 1; i < resolver.BrokenAfterProbes; i++ {
		if health := c.Probe(ctx); health.Broken || c.BrokenGauge() {
			t.Fatalf("probe %d of an RRSIG-stripping upstream already made a diagnosis: %+v", i, health)
		}
		if a, _ := c.Lookup(ctx, "secure.test", dns.TypeMX); a.Security != resolver.Bogus || a.UpstreamBroken {
			t.Fatalf("after %d probes, before any diagnosis: %s %q", i, a.Security, a.Reason)
		}
	}
	if !strings.Contains(logs.String(), "without DNSSEC records") || !strings.Contains(logs.String(), "with no RRSIG") {
		t.Fatalf("what the probes saw was not logged:\n%s", logs.String())
	}
	health := c.Probe(ctx)
	if !health.Broken || !c.BrokenGauge() || !strings.Contains(health.Problem, "strips RRSIG") ||
		!strings.Contains(health.Problem, "probes in a row") || !strings.Contains(health.Problem, "dns.servers") {
		t.Fatalf("probe %d: %+v", resolver.BrokenAfterProbes, health)
	}
	if !strings.Contains(logs.String(), "the DNS upstream breaks DNSSEC") {
		t.Fatalf("the diagnosis was not logged:\n%s", logs.String())
	}
	if a, _ := c.Lookup(ctx, "secure.test", dns.TypeMX); a.Security != resolver.Indeterminate || !a.UpstreamBroken || !strings.Contains(a.Reason, "DANE cannot be checked") {
		t.Fatalf("defer policy: %s %q", a.Security, a.Reason)
	}
	// The operator's opt-in weakening (dns.on_broken_upstream: insecure)
	// applies under the same diagnosis only ...
	lenient := h.client(t, resolver.Options{InsecureOnBrokenUpstream: true})
	lenient.Probe(ctx)
	if a, _ := lenient.Lookup(ctx, "secure.test", dns.TypeMX); a.Security != resolver.Bogus {
		t.Fatalf("insecure policy after one probe: %s %q", a.Security, a.Reason)
	}
	for i := 1; i < resolver.BrokenAfterProbes; i++ {
		lenient.Probe(ctx)
	}
	if a, _ := lenient.Lookup(ctx, "mx.secure.test", dns.TypeA); a.Security != resolver.Insecure || !a.UpstreamBroken || !strings.Contains(a.Reason, "upstream strips DNSSEC") {
		t.Fatalf("insecure policy: %s %q", a.Security, a.Reason)
	}
	// ... and never makes an NXDOMAIN Insecure: it is unproven, and a
	// bounce needs a proof.
	for _, cl := range []*resolver.Client{c, lenient} {
		mx, err := cl.LookupMX(ctx, "nope.secure.test")
		if err != nil || !mx.NXDomain || mx.Security != resolver.Indeterminate || !mx.UpstreamBroken {
			t.Fatalf("unproven NXDOMAIN: %+v %v", mx, err)
		}
		addrs, err := cl.LookupAddrs(ctx, "nope.secure.test")
		if err != nil || !addrs.NXDomain || addrs.Security != resolver.Indeterminate || !addrs.UpstreamBroken {
			t.Fatalf("unproven NXDOMAIN addresses: %+v %v", addrs, err)
		}
	}
	// A good answer ends the diagnosis.
	h.srv.Tamper(nil)
	if health := c.Probe(ctx); health.Broken || c.BrokenGauge() {
		t.Fatalf("the upstream was repaired: %+v", health)
	}
	if a, _ := c.Lookup(ctx, "expired.test", dns.TypeMX); a.Security != resolver.Bogus || a.UpstreamBroken {
		t.Fatalf("bogus with a healthy upstream: %s %q", a.Security, a.Reason)
	}
}

// Issue 14, item 1: a transport that does not answer (here TCP, as an
// attacker blocking TCP/53 would make it) is unreachable, logged as such
// with what was seen. It is no evidence that DNSSEC is stripped: however
// often it is seen, it never sets Broken or the gauge, and Bogus stays Bogus.
func TestUnreachableUpstreamIsNotBroken(t *testing.T) {
	h := newHierarchy(t)
	ctx := context.Background()
	var logs logBuffer
	c := h.client(t, resolver.Options{Log: logs.logger(), InsecureOnBrokenUpstream: true})
	h.srv.RefuseTCP()
	for i := 0; i < 2*resolver.BrokenAfterProbes; i++ {
		if health := c.Probe(ctx); health.Broken || c.BrokenGauge() {
			t.Fatalf("probe %d: one unreachable transport made a diagnosis: %+v", i+1, health)
		}
	}
	health := c.Health()
	if u := health.Unreachable(); !strings.Contains(u, "over tcp") || strings.Contains(u, "over udp") || health.Suspect() {
		t.Fatalf("findings: %+v", health.Findings)
	}
	if l := logs.String(); !strings.Contains(l, "unreachable") || !strings.Contains(l, "network=tcp") || !strings.Contains(l, "seen=") {
		t.Fatalf("the unreachable transport was not logged with what was seen:\n%s", l)
	}
	if a, _ := c.Lookup(ctx, "expired.test", dns.TypeMX); a.Security != resolver.Bogus || a.UpstreamBroken {
		t.Fatalf("bogus answer while only TCP is unreachable: %s %q", a.Security, a.Reason)
	}
	// A silent server and a server that answers garbage are unreachable too.
	for _, f := range []resolvertest.Failure{resolvertest.Silent, resolvertest.Garbage} {
		h.srv.Fail(f)
		quick := h.client(t, resolver.Options{Timeout: 200 * time.Millisecond})
		for i := 0; i < resolver.BrokenAfterProbes; i++ {
			if health := quick.Probe(ctx); health.Broken || health.Suspect() {
				t.Fatalf("failure %d, probe %d: %+v", f, i+1, health)
			}
		}
	}
	h.srv.Fail(resolvertest.Healthy)
	// An unreachable probe between two that saw RRSIGs missing neither
	// counts nor resets; a good answer resets.
	h.srv.Tamper(func(q dns.Question, m *dns.Msg) { m.Answer = without(m.Answer, dns.TypeRRSIG) })
	defer h.srv.Tamper(nil)
	fresh := h.client(t, resolver.Options{Timeout: 200 * time.Millisecond})
	fresh.Probe(ctx) // udp: stripped (1); tcp: unreachable
	h.srv.Fail(resolvertest.Silent)
	slowProbe := fresh.Probe(ctx)
	h.srv.Fail(resolvertest.Healthy)
	if slowProbe.Suspect() || slowProbe.Broken {
		t.Fatalf("unanswered probe: %+v", slowProbe)
	}
	fresh.Probe(ctx) // 2
	if health := fresh.Probe(ctx); !health.Broken || !strings.Contains(health.Problem, "over udp") || strings.Contains(health.Problem, "over tcp") {
		t.Fatalf("third stripped answer over UDP: %+v", health)
	}
}

// TestDiagnose: the one-shot check probes until it can tell.
func TestDiagnose(t *testing.T) {
	h := newHierarchy(t)
	ctx := context.Background()
	c := h.client(t, resolver.Options{})
	before := h.srv.Queries()
	if health := c.Diagnose(ctx); health.Broken || h.srv.Queries()-before != 2 {
		t.Fatalf("healthy: %+v after %d questions", health, h.srv.Queries()-before)
	}
	h.srv.Tamper(func(q dns.Question, m *dns.Msg) { m.Answer = without(m.Answer, dns.TypeRRSIG) })
	defer h.srv.Tamper(nil)
	if health := c.Diagnose(ctx); !health.Broken || !strings.Contains(health.Problem, "strips RRSIG") {
		t.Fatalf("stripping: %+v", health)
	}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestCache(t *testing.T) {
	h := newHierarchy(t)
	ctx := context.Background()
	clock := &fakeClock{now: time.Now()}
	c := h.client(t, resolver.Options{Clock: clock.Now, CacheMaxTTL: 10 * time.Minute})

	if _, err := c.Lookup(ctx, "secure.test", dns.TypeMX); err != nil {
		t.Fatal(err)
	}
	cold := h.srv.Queries()
	a, err := c.Lookup(ctx, "secure.test", dns.TypeMX)
	if err != nil || a.Security != resolver.Secure || h.srv.Queries() != cold {
		t.Fatalf("second lookup asked upstream: %d queries after %d (%v)", h.srv.Queries(), cold, err)
	}
	// The zone chain is shared: a sibling name costs only its own questions.
	if _, err := c.Lookup(ctx, "mx.secure.test", dns.TypeA); err != nil {
		t.Fatal(err)
	}
	if extra := h.srv.Queries() - cold; extra > 2 {
		t.Fatalf("sibling lookup asked %d questions; the chain should be cached", extra)
	}
	// Entries live as long as their TTL (the MX has 300 s), not longer.
	before := h.srv.Queries()
	clock.Advance(299 * time.Second)
	c.Lookup(ctx, "secure.test", dns.TypeMX)
	if h.srv.Queries() != before {
		t.Fatal("expired before its TTL")
	}
	clock.Advance(2 * time.Second)
	c.Lookup(ctx, "secure.test", dns.TypeMX)
	if h.srv.Queries() == before {
		t.Fatal("served after its TTL")
	}
	// Negative answers are cached for the SOA minimum (300 s here).
	c.Lookup(ctx, "nope.secure.test", dns.TypeA)
	before = h.srv.Queries()
	if a, _ := c.Lookup(ctx, "nope.secure.test", dns.TypeA); !a.NXDomain || h.srv.Queries() != before || a.TTL > 300*time.Second {
		t.Fatalf("negative caching: %+v, %d new queries", a, h.srv.Queries()-before)
	}
	// Bogus answers are kept only briefly (RFC 9520).
	if a, _ := c.Lookup(ctx, "expired.test", dns.TypeMX); a.Security != resolver.Bogus {
		t.Fatal(a.Security)
	}
	before = h.srv.Queries()
	clock.Advance(61 * time.Second)
	c.Lookup(ctx, "expired.test", dns.TypeMX)
	if h.srv.Queries() == before {
		t.Fatal("a bogus answer was cached for more than a minute")
	}
	// Concurrent lookups of one question share one upstream query.
	fresh := h.client(t, resolver.Options{})
	fresh.Lookup(ctx, "ed.test", dns.TypeMX) // warm the chain
	before = h.srv.Queries()
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a, err := fresh.Lookup(ctx, "www.ed.test", dns.TypeA); err != nil || a.Security != resolver.Secure {
				t.Errorf("%+v %v", a, err)
			}
		}()
	}
	wg.Wait()
	if n := h.srv.Queries() - before; n > 3 {
		t.Fatalf("20 concurrent lookups asked %d questions", n)
	}
}

func TestTemporaryFailureIsNotAnAnswer(t *testing.T) {
	h := newHierarchy(t)
	h.srv.ServFail("secure.test")
	c := h.client(t, resolver.Options{})
	if _, err := c.Lookup(context.Background(), "secure.test", dns.TypeMX); !errors.Is(err, resolver.ErrTemporary) {
		t.Fatalf("SERVFAIL: %v", err)
	}
}

func TestAnchorFile(t *testing.T) {
	h := newHierarchy(t)
	path := t.TempDir() + "/anchors"
	writeFile(t, path, "; the test root\n"+h.root.Anchor())
	anchors, err := resolver.LoadAnchors(path)
	if err != nil {
		t.Fatal(err)
	}
	c := h.client(t, resolver.Options{Anchors: anchors})
	if a, _ := c.Lookup(context.Background(), "secure.test", dns.TypeMX); a.Security != resolver.Secure {
		t.Fatalf("%s %s", a.Security, a.Reason)
	}
	writeFile(t, path, "example. 300 IN A 192.0.2.1\n")
	if _, err := resolver.LoadAnchors(path); err == nil || !strings.Contains(err.Error(), "neither DS nor DNSKEY") {
		t.Fatalf("bad anchor file: %v", err)
	}
	// The built-in IANA anchors do not validate the test's root.
	iana := h.client(t, resolver.Options{Anchors: resolver.RootAnchors()})
	if a, _ := iana.Lookup(context.Background(), "secure.test", dns.TypeMX); a.Security != resolver.Bogus {
		t.Fatalf("foreign root under the IANA anchors: %s", a.Security)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A lookup abandoned by its caller is not remembered as a failure.
func TestCancelledLookupIsNotCached(t *testing.T) {
	h := newHierarchy(t)
	c := h.client(t, resolver.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Lookup(ctx, "secure.test", dns.TypeMX); err == nil {
		t.Fatal("a cancelled lookup succeeded")
	}
	if a, err := c.Lookup(context.Background(), "secure.test", dns.TypeMX); err != nil || a.Security != resolver.Secure {
		t.Fatalf("after a cancelled lookup: %+v %v", a, err)
	}
}

// A probe or readiness check cut short by its own context (shutdown, a
// deadline) learns nothing about the upstream and says so.
func TestAbandonedProbeLearnsNothing(t *testing.T) {
	h := newHierarchy(t)
	var logs logBuffer
	c := h.client(t, resolver.Options{Log: logs.logger()})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if health := c.Probe(ctx); health.Broken || len(health.Findings) != 0 || strings.Contains(logs.String(), "unreachable") {
		t.Fatalf("a cancelled probe: %+v\n%s", health, logs.String())
	}
	if err := c.Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled readiness check: %v", err)
	}
}

// RunProbes keeps probing until the diagnosis is made, and stops with its
// context.
func TestRunProbesReachesTheDiagnosis(t *testing.T) {
	h := newHierarchy(t)
	h.srv.Tamper(func(q dns.Question, m *dns.Msg) { m.Answer = without(m.Answer, dns.TypeRRSIG) })
	defer h.srv.Tamper(nil)
	c := h.client(t, resolver.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.RunProbes(ctx, 10*time.Millisecond); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for !c.Health().Broken {
		if time.Now().After(deadline) {
			t.Fatalf("no diagnosis: %+v", c.Health())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}
