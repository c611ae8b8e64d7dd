package resolver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// exchange asks the servers in a random order until one answers, falling
// back to TCP when the UDP answer is truncated. In Validate mode it sets CD,
// so that an upstream validator hands over bogus data for us to judge instead
// of hiding it behind SERVFAIL.
func (c *Client) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	q.SetEdns0(1232, c.mode != Off) // the DO bit: ask for DNSSEC records along
	q.CheckingDisabled = c.mode == Validate
	servers := slices.Clone(c.servers)
	rand.Shuffle(len(servers), func(i, j int) { servers[i], servers[j] = servers[j], servers[i] })
	var lastErr error
	for attempt := 0; attempt < c.attempts; attempt++ {
		for _, server := range servers {
			if ended(ctx) {
				return nil, c.stopped(ctx, name, qtype, lastErr)
			}
			msg, err := c.exchangeWith(ctx, q, server, "udp")
			if err != nil {
				if ended(ctx) {
					// The deadline, not the server, ended this try: miekg/dns
					// reports it as an i/o timeout, which would read as the
					// upstream failing.
					return nil, c.stopped(ctx, name, qtype, err)
				}
				lastErr = fmt.Errorf("%s: %w", server, err)
				continue
			}
			switch msg.Rcode {
			case dns.RcodeSuccess, dns.RcodeNameError:
				return msg, nil
			default:
				lastErr = fmt.Errorf("%s from %s", dns.RcodeToString[msg.Rcode], server)
			}
		}
	}
	return nil, fmt.Errorf("%s %s: %w: %w", dns.TypeToString[qtype], name, ErrTemporary, lastErr)
}

// stopped is the error of a question abandoned because ctx ended. It wraps
// the context's cause, so that a caller's deadline (or cancellation) is
// never taken, and cached, as an upstream failure; a shared resolution's
// own budget has a cause of its own (errBudget), which is one.
func (c *Client) stopped(ctx context.Context, name string, qtype uint16, last error) error {
	if last != nil {
		return fmt.Errorf("%s %s: %w: %w (last try: %v)", dns.TypeToString[qtype], name, ErrTemporary, context.Cause(ctx), last)
	}
	return fmt.Errorf("%s %s: %w: %w", dns.TypeToString[qtype], name, ErrTemporary, context.Cause(ctx))
}

// ended reports whether ctx is done or its deadline has passed: miekg/dns
// sets the socket's deadline from the context's, and the socket can report
// it a moment before the context's own timer marks it done.
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		<-ctx.Done() // an instant at most: its timer is due
		return true
	}
	return false
}

func (c *Client) exchangeWith(ctx context.Context, q *dns.Msg, server, network string) (*dns.Msg, error) {
	c.upstreamQueries.Add(1)
	c.metrics.upstream(ctx)
	client := &dns.Client{Net: network, Timeout: c.timeout, UDPSize: 1232}
	msg, _, err := client.ExchangeContext(ctx, q, server)
	if err == nil && msg.Truncated && network == "udp" {
		return c.exchangeWith(ctx, q, server, "tcp")
	}
	if err != nil {
		return nil, err
	}
	// miekg/dns matches the ID; the question must match too, or a spoofed
	// or confused answer could be taken for this one.
	if len(msg.Question) != 1 || !strings.EqualFold(msg.Question[0].Name, q.Question[0].Name) ||
		msg.Question[0].Qtype != q.Question[0].Qtype {
		return nil, fmt.Errorf("answer from %s does not match the question", server)
	}
	return msg, nil
}
