// Package resolver answers the DNS questions Postern asks (MX, addresses,
// TLSA, TXT) through recursive upstream servers, and validates DNSSEC itself
// from its own trust anchors, so that DANE can rely on the answers wherever
// Postern runs.
//
// Every answer carries a Security status. Secure means each RRset on the way
// (every CNAME and DNAME link, and the final records or the proof that they
// do not exist) was validated up to a trust anchor. Insecure means a proven
// insecure delegation (or an unsupported algorithm) lies above it. Bogus
// means something that should have been signed was not, or did not verify:
// treat it as an attack. An answer about a name that exists or not is an
// answer; failing to get one is an error wrapping ErrTemporary.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Security is how far an answer is proven authentic.
type Security uint8

const (
	// Indeterminate: cannot be validated now (the upstream is diagnosed as
	// stripping DNSSEC). The zero value, so that an unset status is never
	// read as proof of anything.
	Indeterminate Security = iota
	Insecure               // provably unsigned, outside every trust anchor, or not validated (dnssec: off)
	Secure                 // validated from a trust anchor
	Bogus                  // validation failed: treat as an attack
)

func (s Security) String() string {
	return [...]string{"indeterminate", "insecure", "secure", "bogus"}[s]
}

// weaker returns the weaker of two statuses: a chain is as strong as its
// weakest link, and Bogus anywhere makes the whole answer Bogus.
func weaker(a, b Security) Security {
	rank := func(s Security) int { return [...]int{2, 1, 3, 0}[s] }
	if rank(a) <= rank(b) {
		return a
	}
	return b
}

// ErrTemporary marks failures to get an answer at all (timeouts, SERVFAIL,
// REFUSED, garbage): the question should be asked again later.
var ErrTemporary = errors.New("temporary DNS failure")

// Answer is the outcome of one question.
type Answer struct {
	Name     string   // the question, fully qualified and lower case
	Type     uint16   // the question type
	Records  []dns.RR // records of Type at the end of any alias chain
	Aliases  []string // names reached through CNAME or DNAME, in order
	NXDomain bool     // the (final) name does not exist
	Security Security
	TTL      time.Duration
	Reason   string   // why the answer is not Secure
	Proof    []string // how it was validated, one step per line
	// UpstreamBroken is set when the answer failed validation (it would be
	// Bogus) while the upstream is diagnosed as stripping DNSSEC (Health.
	// Broken), and Security was lowered to Indeterminate, or to Insecure
	// under dns.on_broken_upstream: insecure, for that reason alone: the
	// answer is unproven. An NXDOMAIN so affected is always Indeterminate,
	// never Insecure, whatever the setting: a bounce needs a proof.
	UpstreamBroken bool
}

// Target is the name at which Records were found (the question name when
// there was no alias).
func (a Answer) Target() string {
	if len(a.Aliases) > 0 {
		return a.Aliases[len(a.Aliases)-1]
	}
	return a.Name
}

// MX is one mail exchanger.
type MX struct {
	Host       string // without the trailing dot; "" for a null MX (RFC 7505)
	Preference uint16
}

// MXAnswer is the answer to an MX question. NXDomain means the domain does
// not exist; an empty Records without NXDomain means it has no MX records.
type MXAnswer struct {
	Records        []MX
	NXDomain       bool
	Security       Security
	TTL            time.Duration
	Reason         string
	UpstreamBroken bool // as in Answer
}

// AddrAnswer is the answer to an address question (A and AAAA together).
type AddrAnswer struct {
	Addrs          []netip.Addr
	Aliases        []string // the CNAME chain from the host name, when it is an alias
	NXDomain       bool
	Security       Security
	TTL            time.Duration
	Reason         string
	UpstreamBroken bool // as in Answer, for either of the two questions
}

// Resolver is what delivery needs of DNS.
type Resolver interface {
	LookupMX(ctx context.Context, domain string) (MXAnswer, error)
	LookupAddrs(ctx context.Context, host string) (AddrAnswer, error)
}

// Mode says how DNSSEC is handled (dns.dnssec).
type Mode uint8

const (
	// Validate queries with DO and CD and validates every answer here.
	Validate Mode = iota
	// TrustAD believes the upstream's AD bit; safe only over loopback.
	TrustAD
	// Off reports everything as Insecure, which disables DANE.
	Off
)

// ParseMode reads the dns.dnssec setting.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(s) {
	case "validate", "":
		return Validate, nil
	case "trust-ad":
		return TrustAD, nil
	case "off":
		return Off, nil
	}
	return 0, fmt.Errorf("%q is not one of validate, trust-ad, off", s)
}

func (m Mode) String() string { return [...]string{"validate", "trust-ad", "off"}[m] }

// Options tune a Client. The zero value validates from the IANA root.
type Options struct {
	Timeout  time.Duration // per query and server; default 2s
	Attempts int           // passes over the server list; default 2
	// ResolveTimeout bounds one shared resolution: every question it takes
	// (the answer, the chain of keys down from the anchor, an alias chain
	// asked again). It runs under a context of its own, so that callers
	// sharing it each stop waiting on their own deadline and one giving up
	// fails no other. Default 8 × Timeout × Attempts.
	ResolveTimeout time.Duration
	Mode           Mode
	// Anchors are DS or DNSKEY records that start chains of trust; nil means
	// the IANA root key-signing keys.
	Anchors []dns.RR
	// TrustADRemote allows TrustAD with a non-loopback server.
	TrustADRemote bool
	// While the probes have diagnosed that the upstream strips DNSSEC
	// (Health.Broken: DNSSEC records missing from the anchor zone's DNSKEY
	// answer in BrokenAfterProbes consecutive probes), answers that fail
	// validation are Indeterminate (DANE unknown: mail that needs it
	// waits), or Insecure (logged at each use) when this is set: a
	// weakening the operator opts into. Unproven NXDOMAIN answers stay
	// Indeterminate either way.
	InsecureOnBrokenUpstream bool
	CacheSize                int           // answers and zone states each; default 10,000
	CacheMaxTTL              time.Duration // default 1h
	Clock                    func() time.Time
	Log                      *slog.Logger
}

// Client is a caching, validating stub resolver. It is safe for concurrent use.
type Client struct {
	servers          []string
	timeout          time.Duration
	attempts         int
	budget           time.Duration // of one shared resolution
	mode             Mode
	insecureOnBroken bool
	anchors          map[string][]dns.RR // by zone
	maxTTL           time.Duration
	now              func() time.Time
	log              *slog.Logger

	answers *ttlCache[Answer]
	zones   *ttlCache[zoneState]
	metrics metrics

	upstreamQueries atomic.Int64
	health          atomic.Pointer[Health]
	probeMu         sync.Mutex              // one probe at a time
	streaks         map[probeTarget]*streak // under probeMu: what each server and transport showed, probe after probe
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
	if opts.ResolveTimeout <= 0 {
		opts.ResolveTimeout = 8 * opts.Timeout * time.Duration(opts.Attempts)
	}
	if opts.CacheSize <= 0 {
		opts.CacheSize = 10000
	}
	if opts.CacheMaxTTL <= 0 {
		opts.CacheMaxTTL = time.Hour
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		timeout: opts.Timeout, attempts: opts.Attempts, budget: opts.ResolveTimeout, mode: opts.Mode,
		insecureOnBroken: opts.InsecureOnBrokenUpstream,
		maxTTL:           opts.CacheMaxTTL, now: opts.Clock, log: opts.Log,
		anchors: map[string][]dns.RR{},
		metrics: newMetrics(),
		streaks: map[probeTarget]*streak{},
	}
	for _, s := range servers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(s, "53")
		}
		c.servers = append(c.servers, s)
	}
	if c.mode == TrustAD && !opts.TrustADRemote {
		for _, s := range c.servers {
			host, _, _ := net.SplitHostPort(s)
			if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
				return nil, fmt.Errorf("trust-ad needs a resolver on a loopback address, and %s is not one (set dns.trust_ad_remote to accept it)", s)
			}
		}
	}
	anchors := opts.Anchors
	if anchors == nil {
		anchors = RootAnchors()
	}
	for _, rr := range anchors {
		switch rr.(type) {
		case *dns.DS, *dns.DNSKEY:
		default:
			return nil, fmt.Errorf("trust anchor %s is neither DS nor DNSKEY", rr.Header().Name)
		}
		zone := canonical(rr.Header().Name)
		c.anchors[zone] = append(c.anchors[zone], rr)
	}
	var err error
	if c.answers, err = newTTLCache[Answer](opts.CacheSize, c.now, c.budget); err != nil {
		return nil, err
	}
	if c.zones, err = newTTLCache[zoneState](opts.CacheSize, c.now, c.budget); err != nil {
		return nil, err
	}
	return c, nil
}

// Mode reports how DNSSEC is handled.
func (c *Client) Mode() Mode { return c.mode }

// UpstreamQueries counts the questions sent upstream so far.
func (c *Client) UpstreamQueries() int64 { return c.upstreamQueries.Load() }

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

// Lookup answers one question, from the cache when it can. Concurrent
// lookups of the same question share one resolution, which runs under a
// context of its own bounded by Options.ResolveTimeout: each caller stops
// waiting when its own ctx ends (with an error wrapping ErrTemporary and
// the ctx's cause), and the resolution goes on for the others and the
// cache.
func (c *Client) Lookup(ctx context.Context, name string, qtype uint16) (Answer, error) {
	name = canonical(name)
	key := name + "/" + dns.TypeToString[qtype]
	ans, err, hit := c.answers.lookup(key)
	if !hit {
		ans, err = c.answers.fill(ctx, key, func(ctx context.Context) (Answer, time.Duration, error) {
			a, err := c.resolve(ctx, name, qtype)
			return a, c.cacheTTL(a), err
		})
	}
	c.metrics.lookup(ctx, hit, ans.Security, err)
	if err != nil {
		return Answer{}, err
	}
	if c.mode == Validate && ans.Security == Bogus && c.upstreamBroken() {
		// Through an upstream that strips DNSSEC every signed name looks
		// bogus, so bogus says nothing about an attack. With "insecure" DANE
		// is treated as absent; with "defer" its status is unknown, and the
		// TLS policy defers only mail that needs DANE. Broken is set only by
		// a sustained, specific diagnosis (see Probe), never by one
		// unanswered probe.
		ans.UpstreamBroken = true
		switch {
		case ans.NXDomain:
			// Whatever the setting, an unproven "does not exist" stays
			// unknown: treating it as Insecure would let it bounce mail.
			ans.Security, ans.Reason = Indeterminate, "upstream strips DNSSEC, so this NXDOMAIN is unproven: "+ans.Reason
		case c.insecureOnBroken:
			c.log.Warn("DNSSEC answer treated as insecure because the upstream strips DNSSEC (dns.on_broken_upstream: insecure)",
				"name", name, "type", dns.TypeToString[qtype], "reason", ans.Reason)
			ans.Security, ans.Reason = Insecure, "upstream strips DNSSEC: "+ans.Reason
		default:
			ans.Security, ans.Reason = Indeterminate, "upstream strips DNSSEC, so DANE cannot be checked: "+ans.Reason
		}
	}
	return ans, nil
}

// cacheTTL keeps Bogus answers only briefly (RFC 9520), so that a repaired
// zone is seen soon, and everything else no longer than the cap.
func (c *Client) cacheTTL(a Answer) time.Duration {
	ttl := min(a.TTL, c.maxTTL)
	if a.Security == Bogus {
		ttl = min(ttl, bogusTTL)
	}
	return ttl
}

const (
	bogusTTL   = 60 * time.Second
	failureTTL = 5 * time.Second // RFC 9520: do not hammer an upstream that fails
)

// LookupMX implements Resolver.
func (c *Client) LookupMX(ctx context.Context, domain string) (MXAnswer, error) {
	a, err := c.Lookup(ctx, domain, dns.TypeMX)
	if err != nil {
		return MXAnswer{}, err
	}
	out := MXAnswer{NXDomain: a.NXDomain, Security: a.Security, TTL: a.TTL, Reason: a.Reason, UpstreamBroken: a.UpstreamBroken}
	for _, rr := range a.Records {
		mx := rr.(*dns.MX)
		out.Records = append(out.Records, MX{Host: strings.TrimSuffix(strings.ToLower(mx.Mx), "."), Preference: mx.Preference})
	}
	return out, nil
}

// LookupAddrs implements Resolver: AAAA and A are asked in turn; a failure
// of one with an answer from the other still counts as an answer. The
// status is the weaker of the two.
func (c *Client) LookupAddrs(ctx context.Context, host string) (AddrAnswer, error) {
	out := AddrAnswer{NXDomain: true, Security: Secure}
	var firstErr error
	answered := false
	for _, qtype := range []uint16{dns.TypeAAAA, dns.TypeA} {
		a, err := c.Lookup(ctx, host, qtype)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		answered = true
		out.NXDomain = out.NXDomain && a.NXDomain
		out.UpstreamBroken = out.UpstreamBroken || a.UpstreamBroken
		if out.TTL == 0 || (a.TTL > 0 && a.TTL < out.TTL) {
			out.TTL = a.TTL
		}
		if weaker(a.Security, out.Security) != out.Security {
			out.Security, out.Reason = a.Security, a.Reason
		}
		if len(a.Aliases) > len(out.Aliases) {
			out.Aliases = a.Aliases
		}
		for _, rr := range a.Records {
			var ip net.IP
			switch r := rr.(type) {
			case *dns.A:
				ip = r.A
			case *dns.AAAA:
				ip = r.AAAA
			}
			if addr, ok := netip.AddrFromSlice(ip); ok {
				out.Addrs = append(out.Addrs, addr.Unmap())
			}
		}
	}
	if !answered {
		return AddrAnswer{}, firstErr
	}
	if len(out.Addrs) > 0 {
		out.NXDomain = false
	}
	return out, nil
}

// LookupTLSA returns the TLSA records for a TCP port of host, following
// CNAMEs (the Answer's Aliases say where they were found, for RFC 7672 2.2.3).
func (c *Client) LookupTLSA(ctx context.Context, host string, port int) (Answer, error) {
	return c.Lookup(ctx, fmt.Sprintf("_%d._tcp.%s", port, dns.Fqdn(host)), dns.TypeTLSA)
}

// LookupTXT returns the TXT strings of name, each record's strings joined.
func (c *Client) LookupTXT(ctx context.Context, name string) ([]string, Answer, error) {
	a, err := c.Lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, a, err
	}
	var out []string
	for _, rr := range a.Records {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return out, a, nil
}

// canonical returns name fully qualified and in lower case.
func canonical(name string) string {
	return strings.ToLower(dns.Fqdn(name))
}
