package delivery

import (
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
)

// Source is a local address deliveries leave from, with the name Postern
// gives in EHLO from it: the name its PTR record gives, so that receivers
// checking forward-confirmed reverse DNS and SPF (RFC 7208 2.3 checks the
// HELO identity too) see the three agree.
type Source struct {
	Addr netip.Addr
	HELO string // empty: Config.Hostname
}

// egress is where one connection leaves from and what it says in EHLO.
type egress struct {
	dialer *net.Dialer
	helo   string
}

// sourceFor picks the source for a connection to dst on hop. A route's own
// source is used alone; otherwise, with Config.Sources set, one of the
// sources of dst's family, the same one for every connection to a host so
// that the receiver sees one consistent address and name from us (and a
// pooled session never serves a host from another address). Without
// sources the kernel chooses, as before. ok is false when no permitted
// source can reach dst's family: leaving from an unlisted address would be
// leaving from one whose PTR and SPF records say nothing of us.
func (e *Engine) sourceFor(hop Hop, dst netip.Addr) (src Source, ok bool) {
	dst = dst.Unmap()
	if r := hop.Route; r != nil && r.Source.Addr.IsValid() {
		return r.Source, r.Source.Addr.Is4() == dst.Is4()
	}
	if len(e.cfg.Sources) == 0 {
		return Source{}, true
	}
	var fit []Source
	for _, s := range e.cfg.Sources {
		if s.Addr.Is4() == dst.Is4() {
			fit = append(fit, s)
		}
	}
	if len(fit) == 0 {
		return Source{}, false
	}
	h := fnv.New32a()
	h.Write([]byte(hop.Host))
	return fit[h.Sum32()%uint32(len(fit))], true
}

// egressFor is the dialer and EHLO name for a connection to dst on hop;
// the caller has checked with reachable that a source exists.
func (e *Engine) egressFor(hop Hop, dst netip.Addr) egress {
	src, _ := e.sourceFor(hop, dst)
	out := egress{dialer: e.d.Dialer, helo: e.cfg.Hostname}
	if src.HELO != "" {
		out.helo = src.HELO
	}
	if src.Addr.IsValid() {
		d := *e.d.Dialer
		d.LocalAddr = &net.TCPAddr{IP: src.Addr.AsSlice()}
		out.dialer = &d
	}
	return out
}

// reachable keeps the addresses of host that a permitted source can reach
// (all of them unless sources are configured), in the given order, which
// delivery.prefer_ipv6 set.
func (e *Engine) reachable(hop Hop, addrs []netip.Addr) ([]netip.Addr, *Failure) {
	var out []netip.Addr
	for _, a := range addrs {
		if _, ok := e.sourceFor(hop, a); ok {
			out = append(out, a)
		}
	}
	if len(out) == 0 && len(addrs) > 0 {
		family := "IPv4"
		if addrs[0].Unmap().Is6() {
			family = "IPv6"
		}
		where := "delivery.source_addresses has no " + family + " address"
		if r := hop.Route; r != nil && r.Source.Addr.IsValid() {
			where = "the route's source_address " + r.Source.Addr.String() + " is not " + family
		}
		return nil, &Failure{Temporary: true, Enhanced: "4.4.4", Host: hop.Host,
			Text: fmt.Sprintf("mail server %s has only %s addresses and %s", hop.Host, family, where)}
	}
	return out, nil
}

// egressKey keeps sessions left from a route's own source apart from the
// others in the connection pool.
func egressKey(hop Hop) string {
	if r := hop.Route; r != nil && r.Source.Addr.IsValid() {
		return "|from " + r.Source.Addr.String()
	}
	return ""
}
