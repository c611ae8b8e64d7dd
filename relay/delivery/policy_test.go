package delivery

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.etcd.io/bbolt"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/relay/tlsrpt"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/resolver/resolvertest"
	"github.com/postern/postern/tlspolicy"
	"github.com/postern/postern/tlspolicy/tlstest"
)

// policyCase is one row of the TLS policy table: what the destination
// publishes and presents, what the operator and the message ask, and what
// must happen.
type policyCase struct {
	name string
	// cert is what the MX presents (nil: a certificate for mx.dest.test
	// from the test CA, which PKIX trusts).
	cert func(t *testing.T, p *pki) tls.Certificate
	// tlsa lists TLSA records for the MX as "usage selector matching",
	// computed over the certificate (or the CA, for usage 2).
	tlsa    []string
	rawTLSA string // a TLSA record given whole
	// alias makes mx.dest.test a CNAME for real.dest.test, with the TLSA
	// records at the name given ("mx" or "real").
	alias       string
	unsigned    bool // dest.test. is an unsigned delegation
	noSTARTTLS  bool
	sts         string // the MTA-STS policy body; "" publishes none
	local       []tlspolicy.Local
	def         tlspolicy.Mode
	tamper      func(q dns.Question, m *dns.Msg)
	requireTLS  bool
	tlsOptional bool
	route       *tlspolicy.Level // send through a smarthost route (to mx.dest.test) at this level; nil level: a route with none
	viaRoute    bool
	// tlsaCNAME makes the TLSA owner of the MX a CNAME into a provider's
	// name (provider.dest.test), where the records are.
	tlsaCNAME bool
	// indeterminate makes every TLSA answer Indeterminate, as validation
	// through an upstream diagnosed as stripping DNSSEC does.
	indeterminate bool
	wantSNI       string // the server name the MX must see, when set
	// want is "delivered AUTH" (AUTH: DANE-EE, DANE-TA, PKIX or none),
	// "deferred CODE [RFC 8460 RESULT]" or "bounced CODE".
	want string
}

type pki struct {
	ca    *tlstest.CA
	inter *tlstest.CA
	other *tlstest.CA // trusted by nobody
}

// finished matches the log line of a transaction that ran to its end.
var finished = regexp.MustCompile(`result=(delivered|partial|refused|deferred)(\s|$)`)

func TestTLSPolicy(t *testing.T) {
	enforce := "version: STSv1\nmode: enforce\nmx: mx.dest.test\nmax_age: 86400\n"
	cases := []policyCase{
		{name: "DANE-EE matches", tlsa: []string{"3 1 1"}, want: "delivered DANE-EE"},
		{name: "DANE-EE full certificate", tlsa: []string{"3 0 0"}, want: "delivered DANE-EE"},
		{name: "DANE-EE mismatch", rawTLSA: "3 1 1 " + strings.Repeat("ab", 32), want: "deferred 4.7.5 tlsa-invalid"},
		{name: "DANE-EE with an unrelated name and CA delivers", cert: func(t *testing.T, p *pki) tls.Certificate {
			return p.other.Leaf(t, true, "unrelated.example")
		}, tlsa: []string{"3 1 1"}, want: "delivered DANE-EE"},
		{name: "MX host is an alias: TLSA at the expanded name", alias: "real", tlsa: []string{"3 1 1"}, want: "delivered DANE-EE"},
		{name: "MX host is an alias: TLSA only at the original name", alias: "mx", tlsa: []string{"3 1 1"}, want: "delivered DANE-EE"},
		{name: "MX host is an alias: mismatch at the expanded name", alias: "real", rawTLSA: "3 1 1 " + strings.Repeat("ab", 32), want: "deferred 4.7.5 tlsa-invalid"},
		{name: "DANE-TA", cert: func(t *testing.T, p *pki) tls.Certificate { return p.inter.Leaf(t, false, "mx.dest.test") },
			tlsa: []string{"2 0 1"}, want: "delivered DANE-TA"},
		{name: "DANE-TA with a certificate for neither the MX nor the domain", cert: func(t *testing.T, p *pki) tls.Certificate {
			return p.inter.Leaf(t, false, "elsewhere.example")
		}, tlsa: []string{"2 0 1"}, want: "deferred 4.7.5"},
		{name: "all TLSA records unusable: TLS still required", rawTLSA: "1 1 1 " + strings.Repeat("ab", 32),
			cert: func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "whatever.example") }, want: "delivered none"},
		{name: "all TLSA records unusable and no STARTTLS", rawTLSA: "0 0 1 " + strings.Repeat("ab", 32), noSTARTTLS: true, want: "deferred 4.7.4"},
		{name: "DANE with an MX that has no STARTTLS", tlsa: []string{"3 1 1"}, noSTARTTLS: true, want: "deferred 4.7.4 starttls-not-supported"},
		{name: "bogus TLSA", tlsa: []string{"3 1 1"}, tamper: func(q dns.Question, m *dns.Msg) {
			if q.Qtype == dns.TypeTLSA {
				for _, rr := range m.Answer {
					if t, ok := rr.(*dns.TLSA); ok {
						t.Certificate = strings.Repeat("cd", 32) // the attacker's key; the signature no longer fits
					}
				}
			}
		}, want: "deferred 4.7.5 dnssec-invalid"},
		{name: "insecure MX set: no DANE, opportunistic", unsigned: true, rawTLSA: "3 1 1 " + strings.Repeat("ab", 32), want: "delivered none"},
		{name: "MTA-STS enforce, good certificate", sts: enforce, want: "delivered PKIX"},
		{name: "MTA-STS enforce, untrusted certificate", sts: enforce,
			cert: func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "mx.dest.test") }, want: "deferred 4.7.5 certificate-not-trusted"},
		{name: "MTA-STS enforce, MX outside the patterns", sts: "version: STSv1\nmode: enforce\nmx: mail.other.test\nmax_age: 86400\n", want: "deferred 4.7.5 validation-failure"},
		{name: "MTA-STS enforce, wildcard pattern", sts: "version: STSv1\nmode: enforce\nmx: *.dest.test\nmax_age: 86400\n", want: "delivered PKIX"},
		{name: "MTA-STS testing delivers despite a bad certificate", sts: strings.Replace(enforce, "enforce", "testing", 1),
			cert: func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "mx.dest.test") }, want: "delivered none"},
		{name: "DANE and MTA-STS both published: DANE wins", sts: enforce, tlsa: []string{"3 1 1"},
			cert: func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "mx.dest.test") }, want: "delivered DANE-EE"},
		{name: "local verify against an untrusted MX", unsigned: true,
			cert:  func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "mx.dest.test") },
			local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeVerify}}, want: "deferred 4.7.5"},
		{name: "local verify against a trusted MX", unsigned: true,
			local: []tlspolicy.Local{{Domain: ".test", Mode: tlspolicy.ModeVerify}}, want: "delivered PKIX"},
		{name: "default verify: the compliance mode", unsigned: true, noSTARTTLS: true, def: tlspolicy.ModeVerify, want: "deferred 4.7.4"},
		{name: "local override may sets a failing DANE aside", rawTLSA: "3 1 1 " + strings.Repeat("ab", 32),
			local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeMay, Override: true}}, want: "delivered none"},
		{name: "local may without override does not weaken DANE", rawTLSA: "3 1 1 " + strings.Repeat("ab", 32),
			local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeMay}}, want: "deferred 4.7.5"},
		{name: "a lapsed exception no longer applies", rawTLSA: "3 1 1 " + strings.Repeat("ab", 32),
			local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeMay, Override: true, Until: time.Now().Add(-time.Hour)}}, want: "deferred 4.7.5"},
		{name: "dane-only without DANE", unsigned: true, local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeDANEOnly}}, want: "deferred 4.7.5 dane-required"},
		{name: "dane-only with DANE", tlsa: []string{"3 1 1"}, local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeDANEOnly}}, want: "delivered DANE-EE"},
		{name: "REQUIRETLS to a plaintext MX is bounced, never delivered", unsigned: true, noSTARTTLS: true, requireTLS: true, want: "bounced 5.7.30"},
		{name: "REQUIRETLS over DANE", tlsa: []string{"3 1 1"}, requireTLS: true, want: "delivered DANE-EE"},
		{name: "REQUIRETLS with a secure MX set verifies PKIX", requireTLS: true, want: "delivered PKIX"},
		{name: "a route without its own level ignores the recipient's MTA-STS", viaRoute: true,
			sts: "version: STSv1\nmode: enforce\nmx: mail.other.test\nmax_age: 86400\n", want: "delivered none"},
		{name: "REQUIRETLS through a route at may still verifies the smarthost", viaRoute: true, route: levelPtr(tlspolicy.May), requireTLS: true,
			cert: func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "mx.dest.test") }, want: "deferred 4.7.5"},
		{name: "REQUIRETLS through a route at may, trusted smarthost", viaRoute: true, route: levelPtr(tlspolicy.May), requireTLS: true,
			want: "delivered PKIX"},
		{name: "REQUIRETLS through a route without a level, trusted smarthost", viaRoute: true, requireTLS: true, want: "delivered PKIX"},
		{name: "TLSA records that cannot be validated (upstream strips DNSSEC): wait, never opportunistic", tlsa: []string{"3 1 1"},
			indeterminate: true, want: "deferred 4.7.5 dnssec-invalid"},
		{name: "dane-only with only unusable TLSA records waits", rawTLSA: "1 1 1 " + strings.Repeat("ab", 32),
			local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeDANEOnly}}, want: "deferred 4.7.5 dane-required"},
		{name: "TLSA owner is a CNAME: SNI stays the MX host", tlsaCNAME: true, tlsa: []string{"3 1 1"}, wantSNI: "mx.dest.test", want: "delivered DANE-EE"},
		{name: "TLSA owner is a CNAME: the provider's name does not pass DANE-TA", tlsaCNAME: true,
			cert: func(t *testing.T, p *pki) tls.Certificate { return p.inter.Leaf(t, false, "provider.dest.test") },
			tlsa: []string{"2 0 1"}, want: "deferred 4.7.5 tlsa-invalid"},
		{name: "only unusable TLSA records and MTA-STS enforce: PKIX is required", rawTLSA: "1 1 1 " + strings.Repeat("ab", 32), sts: enforce,
			cert: func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "mx.dest.test") }, want: "deferred 4.7.5 certificate-not-trusted"},
		{name: "TLS-Required: No sets a failing DANE aside", rawTLSA: "3 1 1 " + strings.Repeat("ab", 32), tlsOptional: true, want: "delivered none"},
		{name: "TLS-Required: No does not set a local policy aside", unsigned: true, tlsOptional: true,
			cert:  func(t *testing.T, p *pki) tls.Certificate { return p.other.Leaf(t, false, "mx.dest.test") },
			local: []tlspolicy.Local{{Domain: "dest.test", Mode: tlspolicy.ModeVerify}}, want: "deferred 4.7.5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { runPolicyCase(t, tc) })
	}
}

func runPolicyCase(t *testing.T, tc policyCase) {
	p := &pki{ca: tlstest.NewCA(t, "Test Root")}
	p.inter = p.ca.Intermediate(t, "Test Intermediate")
	p.other = tlstest.NewCA(t, "Untrusted Root")
	cert := p.ca.Leaf(t, false, "mx.dest.test")
	if tc.cert != nil {
		cert = tc.cert(t, p)
	}
	var sni sync.Map
	mx := smtptest.Start(t, func(mx *smtptest.MX) {
		mx.Server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert},
			GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				sni.Store(hello.ServerName, true)
				return nil, nil
			}}
		if tc.noSTARTTLS {
			mx.Server.TLSConfig = nil
		}
	})

	// MTA-STS: an HTTPS server with a certificate for mta-sts.dest.test.
	stsPort := 0
	if tc.sts != "" {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/.well-known/mta-sts.txt" || r.Host != "mta-sts.dest.test" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, tc.sts)
		}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.ca.Leaf(t, false, "mta-sts.dest.test")}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		u, _ := url.Parse(srv.URL)
		stsPort, _ = strconv.Atoi(u.Port())
	}

	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	records := "@ MX 10 mx\nmx A 127.0.0.1\nmta-sts A 127.0.0.1\n"
	tlsaHost := "mx"
	if tc.alias != "" {
		records = "@ MX 10 mx\nmx CNAME real\nreal A 127.0.0.1\nmta-sts A 127.0.0.1\n"
		tlsaHost = tc.alias
	}
	if tc.sts != "" {
		records += "_mta-sts TXT \"v=STSv1; id=20261129;\"\n"
	}
	tlsaOwner := fmt.Sprintf("_%d._tcp.%s", mx.Port, tlsaHost)
	if tc.tlsaCNAME {
		records += fmt.Sprintf("%s CNAME _%d._tcp.provider\n", tlsaOwner, mx.Port)
		tlsaOwner = fmt.Sprintf("_%d._tcp.provider", mx.Port)
	}
	for _, spec := range tc.tlsa {
		var usage, selector, matching uint8
		fmt.Sscan(spec, &usage, &selector, &matching)
		target := leaf
		if usage == 2 {
			target = p.inter.Cert
		}
		hash, err := dns.CertificateToDANE(selector, matching, target)
		if err != nil {
			t.Fatal(err)
		}
		records += fmt.Sprintf("%s TLSA %s %s\n", tlsaOwner, spec, hash)
	}
	if tc.rawTLSA != "" {
		records += fmt.Sprintf("%s TLSA %s\n", tlsaOwner, tc.rawTLSA)
	}
	algorithm := uint8(dns.ECDSAP256SHA256)
	if tc.unsigned {
		algorithm = 0
	}
	root := resolvertest.NewZone(t, ".", dns.ECDSAP256SHA256, "bounces.test. 300 IN MX 10 mx.dest.test.")
	dest := resolvertest.NewZone(t, "dest.test.", algorithm, records)
	root.Delegate(dest)
	dnsSrv := resolvertest.StartZones(t, root, dest)
	if tc.tamper != nil {
		dnsSrv.Tamper(tc.tamper)
	}
	res, err := resolver.New([]string{dnsSrv.Addr}, resolver.Options{Timeout: time.Second, Attempts: 1, Anchors: root.DS()})
	if err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var policyDNS tlspolicy.Resolver = res
	if tc.indeterminate {
		policyDNS = indeterminateTLSA{res}
	}
	policy, err := tlspolicy.NewEngine(tlspolicy.Config{Default: tc.def, Policies: tc.local, Roots: p.ca.Pool(),
		HonorTLSRequiredNo: true, STSPort: stsPort}, tlspolicy.Deps{Resolver: policyDNS, DB: db})
	if err != nil {
		t.Fatal(err)
	}
	if tc.def == tlspolicy.ModeUnset {
		// Rows that set no default mean the shipped default, may.
		policy, _ = tlspolicy.NewEngine(tlspolicy.Config{Default: tlspolicy.ModeMay, Policies: tc.local, Roots: p.ca.Pool(),
			HonorTLSRequiredNo: true, STSPort: stsPort}, tlspolicy.Deps{Resolver: policyDNS, DB: db})
	}
	log := &syncBuffer{}
	var routes []Route
	if tc.viaRoute {
		routes = []Route{{Match: "*", Host: "mx.dest.test", TLS: tc.route}}
	}
	w := buildWorld(t, mx, dnsSrv, res, policy, slog.New(slog.NewTextHandler(log, nil)), routes...)
	w.engine.d.Roots = p.ca.Pool() // as serve gives routes the same roots as the policy

	env := queue.Envelope{From: sender, RequireTLS: tc.requireTLS, TLSOptional: tc.tlsOptional,
		Recipients: []queue.Recipient{{Addr: "rcpt@dest.test"}}}
	id, err := w.q.Enqueue("", env, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	w.run()

	delivered := 0
	for _, m := range w.mx.Received() {
		if m.From == sender {
			delivered++
		}
	}
	// The evidence: one record per final outcome, with what the wire saw.
	evidence, err := audit.Query(w.q, audit.Filter{RcptDomain: "dest.test"})
	if err != nil {
		t.Fatal(err)
	}
	// What the TLS report of the day will say of dest.test.
	reports, err := tlsrpt.Aggregate(w.q, w.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	var sessions tlsrpt.Summary
	var results []string
	for _, p := range reports["dest.test"] {
		sessions.Successful += p.Summary.Successful
		sessions.Failed += p.Summary.Failed
		for _, f := range p.FailureDetails {
			results = append(results, f.ResultType)
		}
	}
	verb, detail, _ := strings.Cut(tc.want, " ")
	if _, result, ok := strings.Cut(detail, " "); ok && !slices.Contains(results, result) {
		t.Errorf("the TLS report lacks a %s failure: %v (%+v)", result, results, reports["dest.test"])
	}
	if verb == "delivered" && sessions.Successful == 0 && !tc.viaRoute { // a smarthost is not the domain's MX: not reported
		t.Errorf("the TLS report has no successful session: %+v", reports["dest.test"])
	}
	switch verb {
	case "delivered":
		sum := sha256.Sum256(cert.Certificate[0])
		if len(evidence) != 1 || evidence[0].Result != audit.Delivered || evidence[0].Recipient != "rcpt@dest.test" ||
			evidence[0].IP != "127.0.0.1" || evidence[0].MX != "mx.dest.test" || evidence[0].TLSVersion == "" ||
			evidence[0].PeerCertSHA256 != hex.EncodeToString(sum[:]) || evidence[0].PolicyMode == "" ||
			(detail != "none") != evidence[0].Verified || (detail != "none" && evidence[0].VerifiedBy != detail) {
			t.Errorf("evidence of the delivery: %+v", evidence)
		}
	case "bounced":
		if len(evidence) != 1 || evidence[0].Result != audit.Bounced || !strings.Contains(evidence[0].Reply, detail) {
			t.Errorf("evidence of the bounce: %+v", evidence)
		}
	case "deferred":
		if len(evidence) != 0 {
			t.Errorf("evidence for a deferral: %+v", evidence)
		}
	}
	detail, result, _ := strings.Cut(detail, " ")
	if result != "" && !strings.Contains(log.String(), "tls_result="+result) {
		t.Errorf("the log does not name the RFC 8460 result %s:\n%s", result, log.String())
	}
	if tc.wantSNI != "" {
		var seen []string
		sni.Range(func(k, _ any) bool { seen = append(seen, k.(string)); return true })
		if len(seen) != 1 || seen[0] != tc.wantSNI {
			t.Errorf("the MX saw SNI %q, want only %q", seen, tc.wantSNI)
		}
	}
	switch verb {
	case "delivered":
		if delivered != 1 {
			t.Fatalf("not delivered (%q); log:\n%s", w.state(id).Recipients[0].LastReply, log.String())
		}
		want := "tls_auth=" + detail + " "
		if detail == "none" {
			want = `tls_auth="" `
		}
		var line string
		for _, l := range strings.Split(log.String(), "\n") {
			if finished.MatchString(l) && strings.Contains(l, "rcpt@dest.test") {
				line = l
			}
		}
		if !strings.Contains(line, want) {
			t.Fatalf("delivered, but not with %s; log:\n%s", want, log.String())
		}
	case "deferred":
		r := w.state(id).Recipients[0]
		if delivered != 0 || r.State != queue.Pending || !strings.Contains(r.LastReply, detail) {
			t.Fatalf("want deferred with %s, got %d delivered, state %v, reply %q; log:\n%s", detail, delivered, r.State, r.LastReply, log.String())
		}
	case "bounced":
		bounces := w.bounces()
		if delivered != 0 || len(bounces) != 1 || !strings.Contains(bounces[0], detail) {
			t.Fatalf("want a bounce with %s, got %d delivered, bounces %q; log:\n%s", detail, delivered, bounces, log.String())
		}
		if strings.Contains(bounces[0], "hello") {
			t.Fatal("a REQUIRETLS bounce carries the body")
		}
	}
}

// syncBuffer collects log output from several workers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestDowngradeMemory: a domain that has delivered over verified TLS and
// then offers no STARTTLS is what a STARTTLS-stripping attacker looks like.
func TestDowngradeMemory(t *testing.T) {
	for _, mode := range []tlspolicy.MemoryMode{tlspolicy.MemoryWarn, tlspolicy.MemoryDefer} {
		t.Run([]string{"warn", "defer"}[mode], func(t *testing.T) {
			ca := tlstest.NewCA(t, "Test Root")
			good := smtptest.Start(t, func(mx *smtptest.MX) {
				mx.Server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, false, "mx.dest.test")}}
			})
			stripped := smtptest.Start(t, func(mx *smtptest.MX) { mx.Server.TLSConfig = nil })
			dnsSrv, anchors := resolvertest.StartSigned(t, testZone)
			res, _ := resolver.New([]string{dnsSrv.Addr}, resolver.Options{Timeout: time.Second, Attempts: 1, Anchors: anchors})
			db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			log := &syncBuffer{}
			policy, err := tlspolicy.NewEngine(tlspolicy.Config{Default: tlspolicy.ModeMay, Roots: ca.Pool(), DowngradeMemory: mode},
				tlspolicy.Deps{Resolver: res, DB: db, Log: slog.New(slog.NewTextHandler(log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			first := buildWorld(t, good, dnsSrv, res, policy, nil)
			first.submit(sender, "a@dest.test")
			first.run()
			if len(good.Received()) != 1 {
				t.Fatal("first delivery failed")
			}
			if m, ok := policy.Memory("dest.test"); !ok || m.Best != tlspolicy.SeenVerified {
				t.Fatalf("memory after a verified delivery (opportunistic, checked passively): %+v %v", m, ok)
			}

			second := buildWorld(t, stripped, dnsSrv, res, policy, nil)
			id := second.submit(sender, "b@dest.test")
			second.run()
			switch mode {
			case tlspolicy.MemoryWarn:
				if len(stripped.Received()) != 1 || !strings.Contains(log.String(), "TLS downgrade") {
					t.Fatalf("warn mode delivers and warns; log:\n%s", log.String())
				}
				if m, _ := policy.Memory("dest.test"); m.Best != tlspolicy.SeenVerified {
					t.Fatal("the downgrade overwrote the memory")
				}
			case tlspolicy.MemoryDefer:
				r := second.state(id).Recipients[0]
				if len(stripped.Received()) != 0 || !strings.Contains(r.LastReply, "4.7.4") || !strings.Contains(r.LastReply, "downgrade memory") {
					t.Fatalf("defer mode: delivered %d, reply %q", len(stripped.Received()), r.LastReply)
				}
				if err := policy.Forget("dest.test"); err != nil {
					t.Fatal(err)
				}
				second.clock.Advance(2 * time.Minute)
				second.run()
				if len(stripped.Received()) != 1 {
					t.Fatal("not delivered after policy forget")
				}
			}
		})
	}
}

func levelPtr(l tlspolicy.Level) *tlspolicy.Level { return &l }

// indeterminateTLSA answers TLSA questions as validation does while the
// upstream is diagnosed as stripping DNSSEC: records, status unknown.
type indeterminateTLSA struct{ *resolver.Client }

func (r indeterminateTLSA) LookupTLSA(ctx context.Context, host string, port int) (resolver.Answer, error) {
	a, err := r.Client.LookupTLSA(ctx, host, port)
	a.Security, a.Reason = resolver.Indeterminate, "upstream strips DNSSEC, so DANE cannot be checked"
	return a, err
}
