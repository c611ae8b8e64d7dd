package tlspolicy

import (
	"context"

	"github.com/miekg/dns"

	"github.com/postern/postern/internal/mailname"
	"github.com/postern/postern/resolver"
)

// Report is everything that goes into the decisions for one domain, for
// people (postern policy check).
type Report struct {
	Domain     string
	MX         resolver.MXAnswer
	MXErr      error
	Local      *Local // the entry in force
	Lapsed     *Local // an entry that would apply but has lapsed
	STSRecords []string
	STSErr     error // the TXT lookup failed
	STSPolicy  *STSPolicy
	STSCached  *CachedSTS
	STSFailure string // why the last policy fetch failed
	Hosts      []HostReport
}

// HostReport is one MX host: its addresses, TLSA records and decision.
type HostReport struct {
	Host     string
	Addrs    resolver.AddrAnswer
	AddrErr  error
	TLSA     resolver.Answer
	TLSABase string // the TLSA base domain (RFC 7672 2.2.3)
	TLSAErr  error
	Usable   int
	Decision Decision
	Refused  error // the host must not be used under the policy
}

// Deliverable reports whether at least one host may be used.
func (r Report) Deliverable() bool {
	for _, h := range r.Hosts {
		if h.Refused == nil {
			return true
		}
	}
	return false
}

// Check gathers the report for domain, deciding for each of its MX hosts
// (or the domain itself, as the implicit MX) at port.
func (e *Engine) Check(ctx context.Context, domain string, port int) Report {
	domain = mailname.Normalize(domain)
	r := Report{Domain: domain}
	r.Local, r.Lapsed = localFor(e.rules.Load().Policies, domain, e.d.Clock())
	r.MX, r.MXErr = e.d.Resolver.LookupMX(ctx, domain)
	r.STSRecords, _, r.STSErr = e.d.Resolver.LookupTXT(ctx, "_mta-sts."+domain)
	r.STSPolicy, _ = e.sts.policy(ctx, domain)
	r.STSCached = e.STSCached(domain)
	r.STSFailure = e.STSFailure(domain)
	hosts := []string{}
	for _, mx := range r.MX.Records {
		if mx.Host != "" {
			hosts = append(hosts, mx.Host)
		}
	}
	if r.MXErr == nil && len(r.MX.Records) == 0 && !r.MX.NXDomain {
		hosts = append(hosts, domain) // RFC 5321 5.1: the implicit MX
	}
	for _, h := range hosts {
		hr := HostReport{Host: h}
		hr.Addrs, hr.AddrErr = e.d.Resolver.LookupAddrs(ctx, h)
		// The same lookup the decision makes (the expanded name of an alias first).
		hr.TLSA, hr.TLSABase, hr.TLSAErr = e.tlsaFor(ctx, Request{Domain: domain, MXHost: h, Port: port}, hr.Addrs)
		hr.Usable = len(Usable(tlsaRecords(hr.TLSA)))
		hr.Decision, hr.Refused = e.Decide(ctx, Request{Domain: domain, MXHost: h, Port: port})
		r.Hosts = append(r.Hosts, hr)
	}
	return r
}

func tlsaRecords(a resolver.Answer) []*dns.TLSA {
	var out []*dns.TLSA
	for _, rr := range a.Records {
		if t, ok := rr.(*dns.TLSA); ok {
			out = append(out, t)
		}
	}
	return out
}
