package resolver

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// BrokenAfterProbes is how many consecutive answered probes of one server
// and transport must see DNSSEC records missing before the upstream is
// diagnosed as breaking DNSSEC. One odd answer is not a diagnosis, and an
// unanswered probe is no evidence at all (issue 14, item 1).
const BrokenAfterProbes = 3

// probeRetry is how soon a probe is repeated while a diagnosis is being
// confirmed, whatever dns.probe_interval says.
const probeRetry = time.Minute

// Health is what the probes of the upstream servers found.
type Health struct {
	Checked time.Time
	// Broken is a sustained, specific diagnosis: a server, over UDP or
	// TCP, answered the anchor zone's DNSKEY question (with the DO bit)
	// without the DNSKEY records or without their RRSIGs (or, under
	// trust-ad, without the AD bit) in BrokenAfterProbes consecutive probes
	// that it answered. A server that does not answer, refuses the
	// connection or answers with an error code is unreachable, which says
	// nothing about DNSSEC and never sets Broken.
	Broken   bool
	Problem  string    // when Broken: what was seen, and the fix
	Findings []Finding // what the last probe saw, per server and transport
}

// Suspect reports whether the last probe saw DNSSEC records missing (the
// diagnosis may not be sustained yet).
func (h Health) Suspect() bool {
	for _, f := range h.Findings {
		if f.Outcome == ProbeStripped {
			return true
		}
	}
	return false
}

// Unreachable lists what the last probe saw of the servers and transports
// that gave no usable answer ("" when all answered).
func (h Health) Unreachable() string {
	var out []string
	for _, f := range h.Findings {
		if f.Outcome == ProbeUnreachable {
			out = append(out, f.Server+" over "+f.Network+": "+f.Seen)
		}
	}
	return strings.Join(out, "; ")
}

// ProbeOutcome classifies what one server said over one transport.
type ProbeOutcome uint8

const (
	ProbeOK          ProbeOutcome = iota // the DNSKEY set with its RRSIGs (and AD under trust-ad)
	ProbeUnreachable                     // no usable answer: timeout, refused connection, error code, garbage
	ProbeStripped                        // an answer without the DNSSEC records asked for
)

func (o ProbeOutcome) String() string {
	return [...]string{"ok", "unreachable", "dnssec-stripped"}[o]
}

// Finding is what one probe saw of one server over one transport.
type Finding struct {
	Server, Network string
	Outcome         ProbeOutcome
	Seen            string // exactly what was seen
	// Streak counts the consecutive answered probes, this one included,
	// that saw DNSSEC records missing; an unreachable probe leaves it as it
	// was, and a good answer resets it.
	Streak int
}

type probeTarget struct{ server, network string }

type streak struct{ stripped int }

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
// zone with the DO bit, over UDP and over TCP, and updates the diagnosis
// (see Health.Broken). An upstream that drops the RRSIGs or ignores DO
// makes every signed domain look Bogus and all DANE mail stall; once that
// is seen probe after probe, Probe says so loudly, with the fix. Whatever
// it sees is logged as it was seen.
func (c *Client) Probe(ctx context.Context) Health {
	c.probeMu.Lock()
	defer c.probeMu.Unlock()
	was := c.upstreamBroken()
	h := Health{Checked: c.now()}
	if c.mode == Off {
		c.metrics.setBroken(false)
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
	var broken []string
	for _, server := range c.servers {
		for _, network := range []string{"udp", "tcp"} {
			f := c.probeOne(ctx, server, network, zone)
			if f.Outcome == ProbeUnreachable && ended(ctx) {
				// The probe was abandoned (shutdown, or the caller's
				// deadline): nothing was learnt about the upstream.
				return c.Health()
			}
			t := probeTarget{server, network}
			st := c.streaks[t]
			if st == nil {
				st = &streak{}
				c.streaks[t] = st
			}
			switch f.Outcome {
			case ProbeOK:
				st.stripped = 0
			case ProbeStripped:
				st.stripped++
			}
			f.Streak = st.stripped
			h.Findings = append(h.Findings, f)
			switch {
			case f.Outcome == ProbeUnreachable:
				c.log.Warn("a DNS upstream gave no usable answer to the DNSSEC probe: unreachable, which says nothing about DNSSEC",
					"server", server, "network", network, "zone", zone, "seen", f.Seen)
			case f.Outcome == ProbeStripped && f.Streak < BrokenAfterProbes:
				c.log.Warn("a DNS upstream answered the DNSSEC probe without DNSSEC records; not yet a diagnosis",
					"server", server, "network", network, "zone", zone, "seen", f.Seen,
					"consecutive", f.Streak, "needed", BrokenAfterProbes)
			}
			if f.Streak >= BrokenAfterProbes {
				broken = append(broken, fmt.Sprintf("%s over %s %s (%d probes in a row)", server, network, f.Seen, f.Streak))
			}
		}
	}
	if len(broken) > 0 {
		h.Broken = true
		h.Problem = strings.Join(broken, "; ") +
			". Point dns.servers at a resolver that passes DNSSEC records through (a local unbound or knot-resolver does)," +
			" or set dns.dnssec: off to disable DANE knowingly"
		c.log.Error("the DNS upstream breaks DNSSEC: DANE cannot be checked, and mail that requires it will wait", "problem", h.Problem,
			"on_broken_upstream", map[bool]string{true: "insecure", false: "defer"}[c.insecureOnBroken])
	} else if was {
		c.log.Info("the DNS upstream passes DNSSEC records again", "zone", zone)
	}
	c.metrics.setBroken(h.Broken)
	c.health.Store(&h)
	return h
}

// probeOne asks one server over one transport, and says exactly what it saw.
func (c *Client) probeOne(ctx context.Context, server, network, zone string) Finding {
	f := Finding{Server: server, Network: network, Outcome: ProbeStripped}
	q := new(dns.Msg)
	q.SetQuestion(zone, dns.TypeDNSKEY)
	q.RecursionDesired = true
	q.SetEdns0(1232, true)
	q.CheckingDisabled = c.mode == Validate
	msg, err := c.exchangeWith(ctx, q, server, network)
	if err != nil {
		f.Outcome, f.Seen = ProbeUnreachable, err.Error()
		return f
	}
	if msg.Rcode != dns.RcodeSuccess {
		f.Outcome, f.Seen = ProbeUnreachable, fmt.Sprintf("answered %s for %s DNSKEY", dns.RcodeToString[msg.Rcode], zone)
		return f
	}
	noOPT := ""
	if msg.IsEdns0() == nil {
		noOPT = ", and no OPT record (EDNS0 ignored, so the DO bit is lost)"
	}
	keys, sigs := rrsetAt(msg.Answer, zone, dns.TypeDNSKEY)
	switch {
	case len(keys) == 0:
		f.Seen = fmt.Sprintf("answered NOERROR for %s DNSKEY with no DNSKEY record (%d records in the answer section)%s", zone, len(msg.Answer), noOPT)
	case len(sigs) == 0:
		f.Seen = fmt.Sprintf("answered %d DNSKEY records for %s with no RRSIG: it strips RRSIG records%s", len(keys), zone, noOPT)
	case c.mode == TrustAD && !msg.AuthenticatedData:
		f.Seen = fmt.Sprintf("answered the signed DNSKEY set of %s without the AD bit: it does not validate, so trust-ad finds nothing Secure", zone)
	default:
		f.Outcome, f.Seen = ProbeOK, fmt.Sprintf("answered %d DNSKEY records for %s with %d RRSIGs", len(keys), zone, len(sigs))
	}
	return f
}

// Diagnose probes up to BrokenAfterProbes times in a row, stopping as soon
// as a probe sees no DNSSEC records missing: a one-shot check (postern dns
// probe) reaches the same sustained diagnosis the daemon does.
func (c *Client) Diagnose(ctx context.Context) Health {
	var h Health
	for i := 0; i < BrokenAfterProbes; i++ {
		h = c.Probe(ctx)
		if h.Broken || !h.Suspect() || ctx.Err() != nil {
			break
		}
	}
	return h
}

// RunProbes probes now and then every interval until ctx ends. While a
// probe has seen DNSSEC records missing and the diagnosis is not yet
// sustained, the next probe comes after probeRetry at the latest (also with
// interval 0, which otherwise probes only at start).
func (c *Client) RunProbes(ctx context.Context, interval time.Duration) {
	for {
		h := c.Probe(ctx)
		wait := interval
		if !h.Broken && h.Suspect() && (wait <= 0 || wait > probeRetry) {
			wait = probeRetry
		}
		if wait <= 0 {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
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
		case err != nil && ended(ctx):
			// The asker's deadline, not the servers: say so, and let the
			// caller tell (errors.Is) a readiness check cut short from a
			// dead upstream.
			return fmt.Errorf("no DNS server answered before the check ended: %w (%s)", context.Cause(ctx), strings.Join(append(problems, fmt.Sprintf("%s: %v", server, err)), "; "))
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
