package delivery

import (
	"cmp"
	"context"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	"github.com/postern/postern/internal/mailname"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

// Route sends a set of recipient domains to a fixed next hop (a smarthost)
// instead of their MX hosts.
type Route struct {
	// Match is an exact domain, ".suffix" for every subdomain, or "*".
	Match    string
	Host     string // host name of the next hop
	Port     int
	Username string // AUTH for this hop, when set
	Password string
	// TLS, when set, is this hop's own requirement instead of the policy's.
	// A route with a Username is held to Verify unless TLS says encrypt
	// and AuthOverUnverifiedTLS is set (configuration refuses the rest).
	TLS *tlspolicy.Level
	// AuthOverUnverifiedTLS lets credentials go over TLS whose certificate
	// was not verified: the operator's explicit, documented choice.
	AuthOverUnverifiedTLS bool
	// Pins are SHA-256 digests of the next hop's public key (SPKI): a
	// certificate with one of these keys is verified without PKIX.
	Pins [][]byte
	// Source, when its address is set, is the only one this route's
	// connections leave from, instead of Config.Sources.
	Source Source
}

// RouteDecision is what a route's next hop must satisfy: the route's own
// level, verified TLS when it carries credentials (and the operator did not
// opt out), and verified TLS for REQUIRETLS mail (RFC 8689 4.2), whatever
// the route says.
func RouteDecision(r Route, roots *x509.CertPool, requireTLS bool) tlspolicy.Decision {
	d := tlspolicy.Decision{Level: tlspolicy.May, Source: "route", Roots: roots, Reason: "route for " + r.Match,
		PolicyType: "no-policy-found"}
	if r.TLS != nil {
		d.Level = *r.TLS
	}
	if len(r.Pins) > 0 && d.Level < tlspolicy.Verify {
		// Pins name the key the next hop must hold: a check that a
		// weaker level would skip (configuration refuses that mix).
		d.Level = tlspolicy.Verify
	}
	if r.Username != "" && d.Level < tlspolicy.Verify && !(d.Level == tlspolicy.Encrypt && r.AuthOverUnverifiedTLS) {
		d.Level, d.Reason = tlspolicy.Verify, d.Reason+"; credentials go only over verified TLS"
	}
	if requireTLS && d.Level < tlspolicy.Verify {
		d.Level, d.Reason = tlspolicy.Verify, d.Reason+"; REQUIRETLS"
	}
	if d.Level == tlspolicy.Verify && len(r.Pins) > 0 {
		d.TLSA, d.Pinned = tlspolicy.PinnedKeys(r.Pins), true
		d.Reason += "; pinned public key"
	}
	return d
}

// RouteFor returns the route delivery takes for domain instead of its MX
// set, if one matches (for postern policy check).
func RouteFor(routes []Route, domain string) (Route, bool) {
	return routeFor(routes, strings.ToLower(strings.TrimSuffix(domain, ".")))
}

// OwnRouteDecision is the decision delivery makes for a route's next hop
// when the route carries its own requirement (tls, credentials or pins);
// own is false when the route leaves the decision to the recipient domain's
// tls.policies entry or tls.default (for postern policy check).
func OwnRouteDecision(r Route, roots *x509.CertPool) (d tlspolicy.Decision, own bool) {
	if r.TLS == nil && r.Username == "" && len(r.Pins) == 0 {
		return tlspolicy.Decision{}, false
	}
	return RouteDecision(r, roots, false), true
}

func (r Route) matches(domain string) bool {
	return r.Match == "*" || mailname.Match(r.Match, domain)
}

// routeFor picks the most specific route: exact, then the longest suffix, then "*".
func routeFor(routes []Route, domain string) (Route, bool) {
	best, bestScore := Route{}, -1
	for _, r := range routes {
		if !r.matches(domain) {
			continue
		}
		score := len(r.Match)
		switch {
		case r.Match == "*":
			score = 0
		case !strings.HasPrefix(r.Match, "."):
			score = 1 << 20
		}
		if score > bestScore {
			best, bestScore = r, score
		}
	}
	return best, bestScore >= 0
}

// Hop is one host to try, in order.
type Hop struct {
	Host  string
	Port  int
	Route *Route // set when the hop comes from a configured route
}

// hops lists where mail for domain goes, best first.
func hops(ctx context.Context, res resolver.Resolver, routes []Route, port int, domain string, shuffle func([]resolver.MX)) ([]Hop, error) {
	if r, ok := routeFor(routes, domain); ok {
		return []Hop{{Host: r.Host, Port: r.Port, Route: &r}}, nil
	}
	ans, err := res.LookupMX(ctx, domain)
	if err != nil {
		// Whatever went wrong asking, the domain's mail is not refused:
		// only an answer (NXDOMAIN, null MX) can fail it for good.
		return nil, &Failure{Temporary: true, Enhanced: "4.4.3", Text: fmt.Sprintf("MX lookup for %s failed: %v", domain, err)}
	}
	switch ans.Security {
	case resolver.Bogus:
		// RFC 7672 2.2.1: a bogus MX RRset may be an attacker's; wait, and
		// never fall back to the domain's address records.
		return nil, &Failure{Temporary: true, Enhanced: "4.7.5", ResultType: "dnssec-invalid",
			Text: fmt.Sprintf("MX lookup for %s failed DNSSEC validation: %s", domain, ans.Reason)}
	case resolver.Indeterminate:
		// Neither validated nor proven unsigned (the upstream strips
		// DNSSEC): the answer may hide DANE, and an NXDOMAIN here is no
		// proof to bounce on. Wait until it can be validated.
		return nil, &Failure{Temporary: true, Enhanced: "4.4.3", ResultType: "dnssec-invalid",
			Text: fmt.Sprintf("MX lookup for %s cannot be validated (%s), so DANE cannot be ruled out", domain, ans.Reason)}
	}
	if ans.NXDomain {
		return nil, &Failure{Enhanced: "5.1.2", Text: fmt.Sprintf("domain %s does not exist", domain)}
	}
	if len(ans.Records) == 0 {
		// RFC 5321 5.1: no MX, so the domain itself is the implicit MX.
		return []Hop{{Host: domain, Port: port}}, nil
	}
	for _, mx := range ans.Records {
		if mx.Host == "" {
			// RFC 7505 3: a null MX means the domain accepts no mail at all.
			return nil, &Failure{Enhanced: "5.1.10", Text: fmt.Sprintf("domain %s accepts no mail (null MX)", domain)}
		}
	}
	records := slices.Clone(ans.Records)
	shuffle(records)
	slices.SortStableFunc(records, func(a, b resolver.MX) int { return cmp.Compare(a.Preference, b.Preference) })
	out := make([]Hop, 0, len(records))
	for _, mx := range records {
		out = append(out, Hop{Host: mx.Host, Port: port})
	}
	return out, nil
}

// randomShuffle spreads load over MX hosts of equal preference (RFC 5321 5.1):
// shuffled first, then stably sorted by preference.
func randomShuffle(mx []resolver.MX) {
	rand.Shuffle(len(mx), func(i, j int) { mx[i], mx[j] = mx[j], mx[i] })
}

// addresses resolves a hop's host (or reads an address literal), in the
// preferred address family first.
func (e *Engine) addresses(ctx context.Context, host string) ([]netip.Addr, *Failure) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a}, nil
	}
	ans, err := e.d.Resolver.LookupAddrs(ctx, host)
	if err != nil {
		return nil, &Failure{Temporary: true, Enhanced: "4.4.3", Text: "address lookup for " + host + ": " + err.Error()}
	}
	if ans.Security == resolver.Bogus {
		return nil, &Failure{Temporary: true, Enhanced: "4.7.5", ResultType: "dnssec-invalid",
			Text: "address lookup for " + host + " failed DNSSEC validation: " + ans.Reason}
	}
	if len(ans.Addrs) == 0 {
		return nil, &Failure{Temporary: true, Enhanced: "4.4.4", Text: "mail server " + host + " has no address"}
	}
	v6, v4 := []netip.Addr{}, []netip.Addr{}
	for _, a := range ans.Addrs {
		if a.Is6() {
			v6 = append(v6, a)
		} else {
			v4 = append(v4, a)
		}
	}
	if e.cfg.PreferIPv6 {
		return append(v6, v4...), nil
	}
	return append(v4, v6...), nil
}
