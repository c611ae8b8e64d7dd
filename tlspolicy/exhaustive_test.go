package tlspolicy_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.etcd.io/bbolt"

	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
	"github.com/postern/postern/tlspolicy/tlstest"
)

// The exhaustive test of the policy engine: every combination of what the
// operator configures, what DNS says (and how sure it is), what MTA-STS
// publishes, what the message asks and what the downgrade memory holds, is
// decided, and each decision is checked against invariants written from the
// RFCs, independently of the engine's code:
//
//   - never weaker than the strongest source that applies;
//   - DNS uncertainty never lowers it: where an answer that could hide DANE
//     is Bogus, Indeterminate or missing, the decision is at least what the
//     strongest certain answer would give (in practice: wait);
//   - a permanent refusal only where an RFC makes it permanent (REQUIRETLS
//     to an MX proven neither DNSSEC-secure nor listed by MTA-STS);
//   - a cleartext retry only where nothing asks for TLS;
//   - two decisions with the same connection key accept the same servers,
//     so a pooled session never carries mail for a stronger decision.

// dnsChain is what DNS says on the way to one MX host's TLSA records.
type dnsChain struct {
	mx, addr, tlsa status
	tlsaAlias      bool // the TLSA record's owner is a CNAME into a provider's zone
}

type status uint8

const (
	stSecure status = iota
	stInsecure
	stBogus
	stIndeterminate
	stError
	// TLSA answers only, all Secure:
	stUsable   // records, some usable (3 1 1)
	stUnusable // records, none usable (1 1 1)
	stAbsent   // securely none
	// Insecure only because dns.on_broken_upstream: insecure lowered an
	// answer that failed validation (resolver's UpstreamBroken): the
	// operator's opt-in for mail that does not need DANE, no proof of
	// anything else.
	stDowngraded
)

var statusNames = [...]string{"secure", "insecure", "bogus", "indeterminate", "error", "usable", "unusable", "absent", "insecure-by-opt-in"}

func (s status) String() string { return statusNames[s] }

func (s status) uncertain() bool {
	return s == stBogus || s == stIndeterminate || s == stError || s == stDowngraded
}

func (s status) security() resolver.Security {
	switch s {
	case stInsecure, stDowngraded:
		return resolver.Insecure
	case stBogus:
		return resolver.Bogus
	case stIndeterminate:
		return resolver.Indeterminate
	}
	return resolver.Secure
}

// chains lists every distinct chain: the statuses after the first one that
// is not Secure are never looked at, so they are not varied.
func chains() []dnsChain {
	var out []dnsChain
	for _, mx := range []status{stInsecure, stBogus, stIndeterminate, stError, stDowngraded} {
		out = append(out, dnsChain{mx: mx})
	}
	for _, addr := range []status{stInsecure, stBogus, stIndeterminate, stError, stDowngraded} {
		out = append(out, dnsChain{mx: stSecure, addr: addr})
	}
	for _, tlsa := range []status{stUsable, stUnusable, stAbsent, stInsecure, stBogus, stIndeterminate, stError, stDowngraded} {
		for _, alias := range []bool{false, true} {
			out = append(out, dnsChain{mx: stSecure, addr: stSecure, tlsa: tlsa, tlsaAlias: alias})
		}
	}
	return out
}

type stsState uint8

const (
	stsNone stsState = iota
	stsTesting
	stsEnforceListed
	stsEnforceNotListed
	stsFetchFailed       // a record, no policy to be had, nothing cached
	stsFetchFailedCached // a record, the fetch fails, an enforce policy listing the MX is cached
	// The _mta-sts TXT answer says there is no record, but fails DNSSEC
	// validation; nothing is cached. It proves nothing either way.
	stsAbsentBogus
	stsStates
)

var stsNames = [...]string{"none", "testing", "enforce-listed", "enforce-not-listed", "fetch-failed", "fetch-failed-cached", "absent-bogus"}

type memoryState uint8

const (
	memNone memoryState = iota
	memEncrypted
	memVerified
	memStates
)

// world is the fake DNS and MTA-STS server of every combination. Each
// recipient domain's name says what DNS and MTA-STS hold for it.
type exhaustiveWorld struct {
	chains []dnsChain
	port   int
}

func domainName(chain int, sts stsState, mem memoryState) string {
	return fmt.Sprintf("c%d-s%d-m%d.test", chain, sts, mem)
}

func (w *exhaustiveWorld) parse(name string) (dnsChain, stsState, bool) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	labels := strings.Split(name, ".")
	for i, l := range labels {
		var c, s, m int
		if n, _ := fmt.Sscanf(l, "c%d-s%d-m%d", &c, &s, &m); n == 3 && i+1 < len(labels) && labels[i+1] == "test" {
			return w.chains[c], stsState(s), true
		}
	}
	return dnsChain{}, 0, false
}

var errUpstream = fmt.Errorf("all servers failed: %w", resolver.ErrTemporary)

func (w *exhaustiveWorld) LookupMX(_ context.Context, domain string) (resolver.MXAnswer, error) {
	c, _, ok := w.parse(domain)
	if !ok {
		return resolver.MXAnswer{NXDomain: true, Security: resolver.Insecure}, nil
	}
	if c.mx == stError {
		return resolver.MXAnswer{}, errUpstream
	}
	return resolver.MXAnswer{Records: []resolver.MX{{Host: "mx." + strings.TrimSuffix(domain, "."), Preference: 10}},
		Security: c.mx.security(), Reason: "as the test says", UpstreamBroken: c.mx == stDowngraded}, nil
}

func (w *exhaustiveWorld) LookupAddrs(_ context.Context, host string) (resolver.AddrAnswer, error) {
	c, sts, ok := w.parse(host)
	loopback := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	switch {
	case strings.HasPrefix(host, "mta-sts."):
		if sts == stsFetchFailed || sts == stsFetchFailedCached {
			return resolver.AddrAnswer{}, errUpstream // the fetch fails at once, without a network
		}
		return resolver.AddrAnswer{Addrs: loopback, Security: resolver.Insecure}, nil
	case !ok:
		return resolver.AddrAnswer{Addrs: loopback, Security: resolver.Insecure}, nil // a smarthost
	case c.addr == stError:
		return resolver.AddrAnswer{}, errUpstream
	}
	return resolver.AddrAnswer{Addrs: loopback, Security: c.addr.security(), Reason: "as the test says", UpstreamBroken: c.addr == stDowngraded}, nil
}

// provider is where an aliased TLSA record's owner points: never a name
// the engine may send in SNI or accept in a certificate.
const provider = "tlsa.provider.example"

func (w *exhaustiveWorld) LookupTLSA(_ context.Context, host string, port int) (resolver.Answer, error) {
	c, _, ok := w.parse(host)
	owner := fmt.Sprintf("_%d._tcp.%s.", port, strings.TrimSuffix(host, "."))
	a := resolver.Answer{Name: owner, Type: dns.TypeTLSA, Reason: "as the test says", Security: resolver.Secure}
	if !ok {
		a.NXDomain = true
		return a, nil
	}
	if c.tlsaAlias {
		a.Aliases = []string{fmt.Sprintf("_%d._tcp.%s.", port, provider)}
	}
	record := func(usage uint8) dns.RR {
		return &dns.TLSA{Hdr: dns.RR_Header{Name: a.Target(), Rrtype: dns.TypeTLSA, Class: dns.ClassINET, Ttl: 300},
			Usage: usage, Selector: 1, MatchingType: 1, Certificate: strings.Repeat("ab", 32)}
	}
	switch c.tlsa {
	case stError:
		return resolver.Answer{}, errUpstream
	case stUsable:
		a.Records = []dns.RR{record(3), record(1)}
	case stUnusable:
		a.Records = []dns.RR{record(1), record(0)}
	case stAbsent:
		a.NXDomain = true
	default: // insecure, bogus, indeterminate, downgraded: records that cannot be trusted
		a.Records, a.Security, a.UpstreamBroken = []dns.RR{record(3)}, c.tlsa.security(), c.tlsa == stDowngraded
	}
	return a, nil
}

func (w *exhaustiveWorld) LookupTXT(_ context.Context, name string) ([]string, resolver.Answer, error) {
	_, sts, ok := w.parse(name)
	a := resolver.Answer{Name: name, Type: dns.TypeTXT, Security: resolver.Insecure}
	if !ok || sts == stsNone {
		a.NXDomain = true
		return nil, a, nil
	}
	if sts == stsAbsentBogus {
		a.NXDomain, a.Security, a.Reason = true, resolver.Bogus, "RRSIG missing"
		return nil, a, nil
	}
	id := "one"
	if sts == stsFetchFailedCached {
		id = "two" // newer than the cached policy, so it is fetched, and that fails
	}
	return []string{"v=STSv1; id=" + id + ";"}, a, nil
}

func (w *exhaustiveWorld) policyBody(host string) (string, bool) {
	domain := strings.TrimPrefix(host, "mta-sts.")
	_, sts, ok := w.parse(domain)
	if !ok {
		return "", false
	}
	mode, mx := "enforce", "mx."+domain
	switch sts {
	case stsTesting:
		mode = "testing"
	case stsEnforceNotListed:
		mx = "elsewhere.example"
	case stsEnforceListed:
	default:
		return "", false
	}
	return fmt.Sprintf("version: STSv1\nmode: %s\nmx: %s\nmax_age: 86400\n", mode, mx), true
}

// localVariant is one tls.policies entry (or none) as the operator wrote it.
type localVariant struct {
	entry *tlspolicy.Local
	// applies: the entry is in force (not lapsed); override: it sets the
	// domain's published policies aside, on purpose.
	applies, override bool
}

func localVariants(now time.Time) []localVariant {
	out := []localVariant{{}}
	modes := []tlspolicy.Mode{tlspolicy.ModeNone, tlspolicy.ModeMay, tlspolicy.ModeEncrypt, tlspolicy.ModeVerify, tlspolicy.ModeDANE, tlspolicy.ModeDANEOnly}
	for _, m := range modes {
		out = append(out,
			localVariant{entry: &tlspolicy.Local{Domain: ".test", Mode: m}, applies: true},
			localVariant{entry: &tlspolicy.Local{Domain: ".test", Mode: m, Until: now.Add(time.Hour)}, applies: true},
			localVariant{entry: &tlspolicy.Local{Domain: ".test", Mode: m, Until: now.Add(-time.Hour)}})
		if m <= tlspolicy.ModeMay {
			out = append(out,
				localVariant{entry: &tlspolicy.Local{Domain: ".test", Mode: m, Override: true}, applies: true, override: true},
				localVariant{entry: &tlspolicy.Local{Domain: ".test", Mode: m, Override: true, Until: now.Add(-time.Hour)}})
		}
	}
	return out
}

// hop is who the decision is for: the domain's MX, a smarthost route, or
// a TLS report's own delivery.
type hop uint8

const (
	hopMX hop = iota
	hopRoute
	hopReport
)

type combination struct {
	local      localVariant
	def        tlspolicy.Mode
	chain      dnsChain
	sts        stsState
	requireTLS bool
	tlsNo      bool // TLS-Required: No (honoured)
	hop        hop
	mem        memoryState
	memDefer   bool
	mxHost     string // the host the decision is for
}

func (c combination) String() string {
	local := "none"
	if e := c.local.entry; e != nil {
		local = e.Mode.String()
		if e.Override {
			local += "+override"
		}
		if !e.Until.IsZero() {
			local += fmt.Sprintf("+until(applies=%t)", c.local.applies)
		}
	}
	return fmt.Sprintf("local=%s default=%s mx=%s addr=%s tlsa=%s alias=%t sts=%s requiretls=%t tls-required-no=%t hop=%d memory=%d defer=%t",
		local, c.def, c.chain.mx, c.chain.addr, c.chain.tlsa, c.chain.tlsaAlias, stsNames[c.sts], c.requireTLS, c.tlsNo, c.hop, c.mem, c.memDefer)
}

// outcome is a decision, or a refusal.
type outcome struct {
	d       tlspolicy.Decision
	refusal *tlspolicy.Refusal
	err     error
}

// strength orders outcomes: none < may < encrypt < verify < waiting; a
// refusal is the strongest, since nothing leaves.
func (o outcome) strength() int {
	if o.err != nil {
		return 10
	}
	return int(o.d.Level)
}

func TestPolicyEngineExhaustive(t *testing.T) {
	start := time.Now()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	w := &exhaustiveWorld{chains: chains()}

	// One HTTPS server serves every domain's MTA-STS policy, with one
	// certificate for all their mta-sts names.
	var stsNamesList []string
	for ci := range w.chains {
		for s := stsState(0); s < stsStates; s++ {
			for m := memoryState(0); m < memStates; m++ {
				stsNamesList = append(stsNamesList, "mta-sts."+domainName(ci, s, m))
			}
		}
	}
	ca := tlstest.NewCA(t, "Exhaustive Root")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, ok := w.policyBody(r.Host)
		if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(rw, r)
			return
		}
		rw.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(rw, body)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, false, stsNamesList...)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	w.port, _ = strconv.Atoi(u.Port())

	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	engines := map[bool]*tlspolicy.Engine{}
	for _, deferMode := range []bool{false, true} {
		mode := tlspolicy.MemoryWarn
		if deferMode {
			mode = tlspolicy.MemoryDefer
		}
		e, err := tlspolicy.NewEngine(tlspolicy.Config{Default: tlspolicy.ModeMay, Roots: ca.Pool(), STSPort: w.port, DowngradeMemory: mode},
			tlspolicy.Deps{Resolver: w, DB: db, Clock: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		engines[deferMode] = e
	}
	// The downgrade memory and the cached MTA-STS policies, as earlier
	// deliveries and fetches left them.
	cached := map[string][]byte{}
	for ci := range w.chains {
		for s := stsState(0); s < stsStates; s++ {
			for m := memoryState(0); m < memStates; m++ {
				d := domainName(ci, s, m)
				switch m {
				case memEncrypted:
					engines[false].Observe(context.Background(), d, tlspolicy.SeenEncrypted)
				case memVerified:
					engines[false].Observe(context.Background(), d, tlspolicy.SeenVerified)
				}
				if s == stsFetchFailedCached {
					pol, err := tlspolicy.ParseSTSPolicy(fmt.Sprintf("version: STSv1\nmode: enforce\nmx: mx.%s\nmax_age: 86400\n", d))
					if err != nil {
						t.Fatal(err)
					}
					cached[d], _ = json.Marshal(tlspolicy.CachedSTS{ID: "one", Policy: pol, Fetched: now.Add(-time.Hour), Expires: now.Add(23 * time.Hour)})
				}
			}
		}
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("mta-sts"))
		for d, v := range cached {
			if err := b.Put([]byte(d), v); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	modes := []tlspolicy.Mode{tlspolicy.ModeNone, tlspolicy.ModeMay, tlspolicy.ModeEncrypt, tlspolicy.ModeVerify, tlspolicy.ModeDANE, tlspolicy.ModeDANEOnly}
	locals := localVariants(now)
	keys := map[string]string{} // connection key -> what it accepts
	ctx := context.Background()
	count, failures, index := 0, 0, 0
	// Each broken invariant is shown once, with its first example and how
	// many combinations break it.
	broken := map[string]int{}
	var order []string
	fail := func(c combination, o outcome, format string, args ...any) {
		failures++
		if broken[format]++; broken[format] == 1 {
			order = append(order, format)
			t.Errorf("%s\n  for %s\n  decision %s err %v", fmt.Sprintf(format, args...), c, summary(o.d), o.err)
		}
	}
	defer func() {
		if broken[uncertaintyLowers] > 0 {
			order = append(order, uncertaintyLowers)
		}
		for _, f := range order {
			t.Logf("%7d combinations: %s", broken[f], f)
		}
	}()
	for _, local := range locals {
		var policies []tlspolicy.Local
		if local.entry != nil {
			policies = []tlspolicy.Local{*local.entry}
		}
		for _, def := range modes {
			for _, e := range engines {
				e.SetRules(def, policies, true)
			}
			for ci, chain := range w.chains {
				for sts := stsState(0); sts < stsStates; sts++ {
					for mem := memoryState(0); mem < memStates; mem++ {
						domain := domainName(ci, sts, mem)
						for _, deferMode := range []bool{false, true} {
							for _, requireTLS := range []bool{false, true} {
								for _, tlsNo := range []bool{false, true} {
									for _, h := range []hop{hopMX, hopRoute, hopReport} {
										if index++; index%exhaustiveStride != 0 {
											continue
										}
										r := tlspolicy.Request{Domain: domain, MXHost: "mx." + domain, Port: 25,
											RequireTLS: requireTLS, TLSOptional: tlsNo, Route: h == hopRoute, Report: h == hopReport}
										if h == hopRoute {
											r.MXHost = "smarthost.example"
										}
										c := combination{local: local, def: def, chain: chain, sts: sts, requireTLS: requireTLS,
											tlsNo: tlsNo, hop: h, mem: mem, memDefer: deferMode, mxHost: r.MXHost}
										d, err := engines[deferMode].Decide(ctx, r)
										o := outcome{d: d, err: err}
										if err != nil && !errors.As(err, &o.refusal) {
											fail(c, o, "an error that is not a Refusal")
										}
										count++
										checkInvariants(c, o, fail)
										if err == nil {
											key := r.MXHost + "|" + d.ConnKey()
											accepts := fmt.Sprintf("%d %t %t %d %s %v %v %v", d.Level, d.Testing, d.Pinned, d.MinVersion, d.SNI, d.Names, d.TLSA, d.Roots)
											if prev, ok := keys[key]; ok && prev != accepts {
												fail(c, o, "connection key %q also names a decision that accepts %s, this one %s", key, prev, accepts)
											}
											keys[key] = accepts
										}
									}
								}
							}
						}
					}
				}
			}
			if index%exhaustiveStride == 0 || exhaustiveStride == 1 {
				checkUncertaintyNeverLowers(t, w, engines, local, def, &failures, broken)
			}
		}
	}
	if failures > 0 {
		t.Fatalf("%d of %d combinations break an invariant", failures, count)
	}
	t.Logf("%d combinations decided and checked (every %d of %d) in %v", count, exhaustiveStride, index, time.Since(start).Round(time.Millisecond))
}

const uncertaintyLowers = "an uncertain DNS answer gives a weaker decision than a certain one it could stand for"

func (c dnsChain) String() string {
	return fmt.Sprintf("mx=%s addr=%s tlsa=%s alias=%t", c.mx, c.addr, c.tlsa, c.tlsaAlias)
}

func summary(d tlspolicy.Decision) string {
	return fmt.Sprintf("{%s level=%s testing=%t tlsa=%d sni=%q names=%v reason=%q}", d.Source, d.Level, d.Testing, len(d.TLSA), d.SNI, d.Names, d.Reason)
}

// checkInvariants holds one decision to what its inputs demand, as read
// from the RFCs and the configuration's documentation.
func checkInvariants(c combination, o outcome, fail func(combination, outcome, string, ...any)) {
	d, refused := o.d, o.err != nil
	published := c.hop == hopMX && !(c.tlsNo) && !c.local.override
	// What the operator asks: the entry in force, else tls.default.
	mode := c.def
	if c.local.applies {
		mode = c.local.entry.Mode
	}
	weakenedByOperator := c.local.override
	need := func(min tlspolicy.Level, why string) {
		if !refused && d.Level < min {
			fail(c, o, "weaker than %s demands (%s)", why, min)
		}
	}
	if !weakenedByOperator {
		switch mode {
		case tlspolicy.ModeEncrypt:
			need(tlspolicy.Encrypt, "the local policy or default")
		case tlspolicy.ModeVerify:
			need(tlspolicy.Verify, "the local policy or default")
		case tlspolicy.ModeDANEOnly:
			if !refused && (d.Level != tlspolicy.Verify || len(d.TLSA) == 0 || d.Pinned) {
				fail(c, o, "dane-only delivers without DANE authentication")
			}
			if refused && o.refusal != nil && o.refusal.Permanent {
				fail(c, o, "dane-only refuses for good")
			}
		}
	}
	if c.requireTLS {
		need(tlspolicy.Verify, "REQUIRETLS")
		if !refused && d.Testing {
			fail(c, o, "REQUIRETLS in testing mode")
		}
	}
	// What the domain publishes, where it applies.
	chainSecure := c.chain.mx == stSecure && c.chain.addr == stSecure
	if published && c.hop == hopMX {
		switch {
		case chainSecure && c.chain.tlsa == stUsable:
			if !refused && (d.Level != tlspolicy.Verify || len(d.TLSA) == 0) {
				fail(c, o, "DANE with usable records is not enforced")
			}
		case chainSecure && c.chain.tlsa == stUnusable:
			need(tlspolicy.Encrypt, "TLSA records that are all unusable (RFC 7672 2.2)")
		}
		daneVerifies := chainSecure && c.chain.tlsa == stUsable
		if !daneVerifies {
			switch c.sts {
			case stsEnforceListed, stsFetchFailedCached:
				need(tlspolicy.Verify, "an MTA-STS policy in enforce mode")
			case stsEnforceNotListed:
				if !refused {
					fail(c, o, "delivered to an MX the MTA-STS policy does not list")
				}
			}
		}
		// DNS uncertainty where it could hide DANE: wait.
		// An MX set insecure by the opt-in is the operator's accepted
		// weakening (DANE off for it); anything below a validated MX set
		// that is not proven stays uncertain, whatever the setting.
		uncertain := (c.chain.mx.uncertain() && c.chain.mx != stDowngraded) || (c.chain.mx == stSecure && c.chain.addr.uncertain()) ||
			(chainSecure && c.chain.tlsa.uncertain())
		if uncertain && !refused {
			fail(c, o, "delivers although DNS cannot tell whether DANE applies")
		}
	}
	if c.hop == hopMX && c.memDefer && !weakenedByOperator {
		switch c.mem {
		case memVerified:
			need(tlspolicy.Verify, "the downgrade memory (verified before)")
		case memEncrypted:
			need(tlspolicy.Encrypt, "the downgrade memory (encrypted before)")
		}
	}
	// Which certificates are accepted. A PKIX decision (MTA-STS enforce,
	// verify, the downgrade memory, REQUIRETLS) names the MX host and
	// nothing else (RFC 8461 4.1, RFC 8689 4.2; the test's local entries
	// add no names); a DANE decision names the TLSA base domain (here the
	// MX host) and at most the next-hop domain (RFC 7672 3.2.2). Where TLS
	// is required, nothing older than TLS 1.2 is accepted (RFC 8996; RFC
	// 8461 4.1 asks for TLS 1.2 or later).
	if !refused && d.Level == tlspolicy.Verify {
		for _, n := range d.Names {
			if n != c.mxHost && !(len(d.TLSA) > 0 && n == d.PolicyDomain) {
				fail(c, o, "a verified decision accepts a certificate for %q, which is not the MX host", n)
			}
		}
	}
	if !refused && d.Level >= tlspolicy.Encrypt && d.MinVersion != 0 && d.MinVersion < tls.VersionTLS12 {
		fail(c, o, "TLS is required, yet a version below 1.2 (%#x) is accepted", d.MinVersion)
	}
	// The DANE base domain is the MX host, never the TLSA record's alias target.
	if !refused && (strings.Contains(d.SNI, provider) || strings.Contains(strings.Join(d.Names, " "), provider)) {
		fail(c, o, "the TLSA record's CNAME target is used as a name")
	}
	if !refused && len(d.TLSA) > 0 && !d.Pinned && d.SNI != "" && d.SNI != "mx."+d.PolicyDomain {
		fail(c, o, "SNI %q is not the MX host", d.SNI)
	}
	// Permanent only where RFC 8689 makes it so.
	if o.refusal != nil && o.refusal.Permanent {
		provenNotListed := c.sts == stsNone || c.sts == stsEnforceNotListed
		if !c.requireTLS || c.hop == hopRoute || c.chain.mx != stInsecure || !provenNotListed || o.refusal.Enhanced != "5.7.30" {
			fail(c, o, "a permanent refusal where nothing is proven impossible")
		}
	}
	if o.refusal != nil && !o.refusal.Permanent && !strings.HasPrefix(o.refusal.Enhanced, "4.") {
		fail(c, o, "a temporary refusal with a permanent status %s", o.refusal.Enhanced)
	}
	// A cleartext retry only where nothing asks for TLS.
	if !refused && d.AllowsCleartextRetry() {
		asks := c.requireTLS || (!weakenedByOperator && mode >= tlspolicy.ModeEncrypt && mode != tlspolicy.ModeDANE) ||
			(published && chainSecure && (c.chain.tlsa == stUsable || c.chain.tlsa == stUnusable)) ||
			(published && c.sts != stsNone && c.sts != stsFetchFailed && c.sts != stsAbsentBogus) ||
			(c.hop == hopMX && c.memDefer && c.mem != memNone && !weakenedByOperator)
		if asks {
			fail(c, o, "a cleartext retry is allowed where TLS is asked for")
		}
	}
}

// checkUncertaintyNeverLowers compares, with everything else equal, the
// decision under each uncertain DNS status with the decisions under every
// certain status the uncertain one could stand for: it must be at least as
// strong as the strongest of them.
func checkUncertaintyNeverLowers(t *testing.T, w *exhaustiveWorld, engines map[bool]*tlspolicy.Engine, local localVariant, def tlspolicy.Mode, failures *int, broken map[string]int) {
	ctx := context.Background()
	byChain := map[dnsChain]int{}
	for i, c := range w.chains {
		byChain[c] = i
	}
	// Which certain chains an uncertain status at each position could hide.
	type slot struct {
		uncertain dnsChain
		certain   []dnsChain
	}
	var slots []slot
	certainTLSA := []status{stUsable, stUnusable, stAbsent, stInsecure}
	for _, u := range []status{stBogus, stIndeterminate, stError, stDowngraded} {
		s := slot{uncertain: dnsChain{mx: u}, certain: []dnsChain{{mx: stInsecure}, {mx: stSecure, addr: stInsecure}}}
		for _, tl := range certainTLSA {
			s.certain = append(s.certain, dnsChain{mx: stSecure, addr: stSecure, tlsa: tl})
		}
		if u != stDowngraded { // the MX set's opt-in is the operator's to make
			slots = append(slots, s)
		}
		s = slot{uncertain: dnsChain{mx: stSecure, addr: u}, certain: []dnsChain{{mx: stSecure, addr: stInsecure}}}
		for _, tl := range certainTLSA {
			s.certain = append(s.certain, dnsChain{mx: stSecure, addr: stSecure, tlsa: tl})
		}
		slots = append(slots, s)
		s = slot{uncertain: dnsChain{mx: stSecure, addr: stSecure, tlsa: u}}
		for _, tl := range certainTLSA {
			s.certain = append(s.certain, dnsChain{mx: stSecure, addr: stSecure, tlsa: tl})
		}
		slots = append(slots, s)
	}
	for _, s := range slots {
		for sts := stsState(0); sts < stsStates; sts++ {
			for mem := memoryState(0); mem < memStates; mem++ {
				for deferMode, e := range engines {
					for _, requireTLS := range []bool{false, true} {
						decide := func(chain dnsChain) outcome {
							domain := domainName(byChain[chain], sts, mem)
							d, err := e.Decide(ctx, tlspolicy.Request{Domain: domain, MXHost: "mx." + domain, Port: 25, RequireTLS: requireTLS})
							o := outcome{d: d, err: err}
							errors.As(err, &o.refusal)
							return o
						}
						u := decide(s.uncertain)
						for _, c := range s.certain {
							if o := decide(c); o.strength() > u.strength() && !local.override {
								*failures++
								if broken[uncertaintyLowers]++; broken[uncertaintyLowers] <= 3 {
									t.Errorf("local=%v default=%s sts=%s memory=%d defer=%t requiretls=%t: DNS %s gives %s, weaker than %s for %s",
										local.entry, def, stsNames[sts], mem, deferMode, requireTLS, s.uncertain, summary(u.d), summary(o.d), c)
								}
							}
						}
					}
				}
			}
		}
	}
}
