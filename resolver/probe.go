package resolver

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Health is what the last probe of the upstream servers found.
type Health struct {
	Checked time.Time
	Broken  bool   // an upstream strips DNSSEC records or cannot carry them
	Problem string // what is wrong, and the fix
}

// Health returns the result of the last Probe (zero before the first).
func (c *Client) Health() Health {
	if h := c.health.Load(); h != nil {
		return *h
	}
	return Health{}
}

func (c *Client) upstreamBroken() bool {
	h := c.health.Load()
	return h != nil && h.Broken
}

// Probe asks every upstream server for the DNSKEY set of the trust anchor
// zone with the DO bit, over UDP and over TCP. An upstream that drops the
// RRSIGs, ignores DO, or fails over one transport makes every signed domain
// look Bogus and all DANE mail stall; Probe says so loudly, with the fix.
func (c *Client) Probe(ctx context.Context) Health {
	h := Health{Checked: c.now()}
	if c.mode == Off {
		c.health.Store(&h)
		return h
	}
	// The highest anchored zone: the root, unless the anchors are private.
	zone := ""
	for z := range c.anchors {
		if zone == "" || dns.CountLabel(z) < dns.CountLabel(zone) {
			zone = z
		}
	}
	var problems []string
	for _, server := range c.servers {
		for _, network := range []string{"udp", "tcp"} {
			if p := c.probeOne(ctx, server, network, zone); p != "" {
				problems = append(problems, p)
			}
		}
	}
	if len(problems) > 0 {
		h.Broken = true
		h.Problem = strings.Join(problems, "; ") +
			". Point dns.servers at a resolver that passes DNSSEC records through (a local unbound or knot-resolver does)," +
			" or set dns.dnssec: off to disable DANE knowingly"
		c.log.Error("the DNS upstream breaks DNSSEC: DANE cannot be checked, and mail that requires it will wait", "problem", h.Problem,
			"on_broken_upstream", map[bool]string{true: "insecure", false: "defer"}[c.insecureOnBroken])
	}
	c.metrics.setBroken(h.Broken)
	c.health.Store(&h)
	return h
}

func (c *Client) probeOne(ctx context.Context, server, network, zone string) string {
	q := new(dns.Msg)
	q.SetQuestion(zone, dns.TypeDNSKEY)
	q.RecursionDesired = true
	q.SetEdns0(1232, true)
	q.CheckingDisabled = c.mode == Validate
	msg, err := c.exchangeWith(ctx, q, server, network)
	switch {
	case err != nil:
		return fmt.Sprintf("%s over %s: %v", server, network, err)
	case msg.Rcode != dns.RcodeSuccess:
		return fmt.Sprintf("%s over %s answered %s for %s DNSKEY", server, network, dns.RcodeToString[msg.Rcode], zone)
	case msg.IsEdns0() == nil:
		return fmt.Sprintf("%s over %s ignores EDNS0", server, network)
	}
	keys, sigs := rrsetAt(msg.Answer, zone, dns.TypeDNSKEY)
	switch {
	case len(keys) == 0:
		return fmt.Sprintf("%s over %s returned no DNSKEY for %s", server, network, zone)
	case len(sigs) == 0:
		return fmt.Sprintf("%s over %s strips RRSIG records (the DO bit is ignored)", server, network)
	case c.mode == TrustAD && !msg.AuthenticatedData:
		return fmt.Sprintf("%s over %s does not validate (no AD bit), so trust-ad finds nothing Secure", server, network)
	}
	return ""
}

// RunProbes probes now and then every interval until ctx ends.
func (c *Client) RunProbes(ctx context.Context, interval time.Duration) {
	c.Probe(ctx)
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Probe(ctx)
		}
	}
}

// Ping asks each upstream server, past the cache, for the SOA of the
// trust anchor zone, and returns nil as soon as one answers. It is the
// readiness check: an error means no server answers at all, so no lookup
// can succeed once the cache runs out.
func (c *Client) Ping(ctx context.Context) error {
	q := new(dns.Msg)
	q.SetQuestion(".", dns.TypeSOA)
	q.RecursionDesired = true
	var problems []string
	for _, server := range c.servers {
		msg, err := c.exchangeWith(ctx, q, server, "udp")
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: %v", server, err))
		case msg.Rcode == dns.RcodeServerFailure || msg.Rcode == dns.RcodeRefused:
			problems = append(problems, fmt.Sprintf("%s answered %s", server, dns.RcodeToString[msg.Rcode]))
		default:
			return nil
		}
	}
	return fmt.Errorf("no DNS server answers: %s", strings.Join(problems, "; "))
}
