package delivery

import (
	"context"
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
	TLS *tlspolicy.Level
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
	if ans.Security == resolver.Bogus {
		// RFC 7672 2.2.1: a bogus MX RRset may be an attacker's; wait, and
		// never fall back to the domain's address records.
		return nil, &Failure{Temporary: true, Enhanced: "4.7.5", Text: fmt.Sprintf("MX lookup for %s failed DNSSEC validation: %s", domain, ans.Reason)}
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
