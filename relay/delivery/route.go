package delivery

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"

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
	switch {
	case r.TLS != nil:
		d.Level = *r.TLS
	case len(r.Pins) > 0:
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

func (r Route) matches(domain string) bool {
	switch {
	case r.Match == "*":
		return true
	case strings.HasPrefix(r.Match, "."):
		return strings.HasSuffix(domain, r.Match)
	}
	return domain == r.Match
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
	records := append([]resolver.MX(nil), ans.Records...)
	shuffle(records)
	sort.SliceStable(records, func(i, j int) bool { return records[i].Preference < records[j].Preference })
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
