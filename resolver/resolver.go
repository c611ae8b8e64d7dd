// Package resolver answers the DNS questions delivery asks (MX, addresses),
// telling apart "the name has no such records" (an answer) from "DNS could
// not be asked" (a temporary error). Answers carry a Security status so that
// DANE can later rely on them; this client does not validate DNSSEC yet and
// reports every answer as Insecure.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Security is how far an answer is proven authentic.
type Security uint8

const (
	Indeterminate Security = iota // not known (no trust anchor covers it)
	Insecure                      // provably unsigned, or not validated
	Secure                        // validated from a trust anchor
	Bogus                         // validation failed: treat as an attack
)

func (s Security) String() string {
	return [...]string{"indeterminate", "insecure", "secure", "bogus"}[s]
}

// ErrTemporary marks failures to get an answer at all (timeouts, SERVFAIL,
// REFUSED): the question should be asked again later.
var ErrTemporary = errors.New("temporary DNS failure")

// MX is one mail exchanger.
type MX struct {
	Host       string // without the trailing dot; "" for a null MX (RFC 7505)
	Preference uint16
}

// MXAnswer is the answer to an MX question. NXDomain means the domain does
// not exist; an empty Records without NXDomain means it has no MX records.
type MXAnswer struct {
	Records  []MX
	NXDomain bool
	Security Security
	TTL      time.Duration
}

// AddrAnswer is the answer to an address question (A and AAAA together).
type AddrAnswer struct {
	Addrs    []netip.Addr
	NXDomain bool
	Security Security
	TTL      time.Duration
}

// Resolver is what the rest of Postern needs of DNS.
type Resolver interface {
	LookupMX(ctx context.Context, domain string) (MXAnswer, error)
	LookupAddrs(ctx context.Context, host string) (AddrAnswer, error)
}

// Options tune a Client.
type Options struct {
	Timeout  time.Duration // per query and server; default 2s
	Attempts int           // passes over the server list; default 2
}

// Client queries recursive servers over UDP with EDNS0, and over TCP when
// an answer is truncated.
type Client struct {
	servers  []string
	timeout  time.Duration
	attempts int
}

// New returns a client for servers ("host:port"; port 53 when absent).
func New(servers []string, opts Options) (*Client, error) {
	if len(servers) == 0 {
		return nil, errors.New("no DNS servers")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Attempts <= 0 {
		opts.Attempts = 2
	}
	c := &Client{timeout: opts.Timeout, attempts: opts.Attempts}
	for _, s := range servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(s, "53")
		}
		c.servers = append(c.servers, s)
	}
	return c, nil
}

// SystemServers returns the nameservers of /etc/resolv.conf.
func SystemServers() ([]string, error) {
	cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil, fmt.Errorf("read /etc/resolv.conf: %w", err)
	}
	var out []string
	for _, s := range cfg.Servers {
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	return out, nil
}

// LookupMX implements Resolver.
func (c *Client) LookupMX(ctx context.Context, domain string) (MXAnswer, error) {
	msg, err := c.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return MXAnswer{}, err
	}
	ans := MXAnswer{NXDomain: msg.Rcode == dns.RcodeNameError, Security: Insecure}
	rrs, ttl := answerFor(msg, domain, dns.TypeMX)
	ans.TTL = ttl
	for _, rr := range rrs {
		mx := rr.(*dns.MX)
		ans.Records = append(ans.Records, MX{Host: strings.TrimSuffix(strings.ToLower(mx.Mx), "."), Preference: mx.Preference})
	}
	return ans, nil
}

// LookupAddrs implements Resolver: AAAA and A are asked in turn; a failure
// of one with an answer from the other still counts as an answer.
func (c *Client) LookupAddrs(ctx context.Context, host string) (AddrAnswer, error) {
	ans := AddrAnswer{Security: Insecure, NXDomain: true}
	var firstErr error
	answered := false
	for _, qtype := range []uint16{dns.TypeAAAA, dns.TypeA} {
		msg, err := c.query(ctx, host, qtype)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		answered = true
		ans.NXDomain = ans.NXDomain && msg.Rcode == dns.RcodeNameError
		rrs, ttl := answerFor(msg, host, qtype)
		if ans.TTL == 0 || (ttl > 0 && ttl < ans.TTL) {
			ans.TTL = ttl
		}
		for _, rr := range rrs {
			var ip net.IP
			switch r := rr.(type) {
			case *dns.A:
				ip = r.A
			case *dns.AAAA:
				ip = r.AAAA
			}
			if a, ok := netip.AddrFromSlice(ip); ok {
				ans.Addrs = append(ans.Addrs, a.Unmap())
			}
		}
	}
	if !answered {
		return AddrAnswer{}, firstErr
	}
	if len(ans.Addrs) > 0 {
		ans.NXDomain = false
	}
	return ans, nil
}

// answerFor follows the CNAME chain in msg from name and returns the
// records of qtype at its end, with the smallest TTL on the way.
func answerFor(msg *dns.Msg, name string, qtype uint16) ([]dns.RR, time.Duration) {
	owner := dns.Fqdn(strings.ToLower(name))
	minTTL := uint32(0)
	seen := map[string]bool{}
	for !seen[owner] {
		seen[owner] = true
		var out []dns.RR
		var next string
		for _, rr := range msg.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, owner) {
				continue
			}
			switch {
			case h.Rrtype == qtype:
				out = append(out, rr)
			case h.Rrtype == dns.TypeCNAME:
				next = strings.ToLower(rr.(*dns.CNAME).Target)
			default:
				continue
			}
			if minTTL == 0 || h.Ttl < minTTL {
				minTTL = h.Ttl
			}
		}
		if len(out) > 0 || next == "" {
			return out, time.Duration(minTTL) * time.Second
		}
		owner = next
	}
	return nil, 0 // a CNAME loop
}

// query asks the servers in a random order until one answers, falling back
// to TCP when the UDP answer is truncated.
func (c *Client) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	q.SetEdns0(1232, true) // the DO bit: ask for DNSSEC records along
	servers := slices.Clone(c.servers)
	rand.Shuffle(len(servers), func(i, j int) { servers[i], servers[j] = servers[j], servers[i] })
	var lastErr error
	for attempt := 0; attempt < c.attempts; attempt++ {
		for _, server := range servers {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("%s %s: %w: %v", dns.TypeToString[qtype], name, ErrTemporary, err)
			}
			msg, err := c.exchange(ctx, q, server)
			if err != nil {
				lastErr = err
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
	return nil, fmt.Errorf("%s %s: %w: %v", dns.TypeToString[qtype], name, ErrTemporary, lastErr)
}

func (c *Client) exchange(ctx context.Context, q *dns.Msg, server string) (*dns.Msg, error) {
	udp := &dns.Client{Net: "udp", Timeout: c.timeout, UDPSize: 1232}
	msg, _, err := udp.ExchangeContext(ctx, q, server)
	if err == nil && msg.Truncated {
		tcp := &dns.Client{Net: "tcp", Timeout: c.timeout}
		msg, _, err = tcp.ExchangeContext(ctx, q, server)
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
