package resolver

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

type denialKind uint8

const (
	denyNone     denialKind = iota // nothing proven
	denyNXDomain                   // the name does not exist
	denyNoData                     // the name exists without the type
	denyInsecure                   // an opt-out span or unworkable NSEC3: the answer cannot be Secure
)

// denial is the outcome of checking a proof of nonexistence.
type denial struct {
	kind       denialKind
	delegation bool // for DS: the name is a delegation without DS (insecure)
	ttl        time.Duration
	how        string // the proof, for people
	why        string // why nothing was proven
}

// proofRecords returns the NSEC and NSEC3 records of the authority section
// that verify under zs, and what was wrong with the others.
func proofRecords(msg *dns.Msg, zs zoneState, now time.Time) ([]*dns.NSEC, []*dns.NSEC3, time.Duration, []string) {
	var nsecs []*dns.NSEC
	var nsec3s []*dns.NSEC3
	var problems []string
	ttl := negativeTTL(msg)
	done := map[string]bool{}
	for _, rr := range msg.Ns {
		h := rr.Header()
		if h.Rrtype != dns.TypeNSEC && h.Rrtype != dns.TypeNSEC3 {
			continue
		}
		owner := canonical(h.Name)
		key := owner + "/" + dns.TypeToString[h.Rrtype]
		if done[key] {
			continue
		}
		done[key] = true
		rrs, sigs := rrsetAt(msg.Ns, owner, h.Rrtype)
		if len(rrs) == 0 {
			continue // not of the class IN
		}
		if !dns.IsSubDomain(zs.Zone, owner) {
			problems = append(problems, owner+" is outside the zone "+zs.Zone)
			continue
		}
		res, err := verifyRRset(rrs, sigs, zs, now)
		if err == nil && res.wildcard != "" {
			err = fmt.Errorf("expanded from a wildcard")
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s %s: %v", owner, dns.TypeToString[h.Rrtype], err))
			continue
		}
		ttl = min(ttl, res.ttl, rrsetTTL(rrs))
		for _, r := range rrs {
			switch r := r.(type) {
			case *dns.NSEC:
				nsecs = append(nsecs, r)
			case *dns.NSEC3:
				nsec3s = append(nsec3s, r)
			}
		}
	}
	return nsecs, nsec3s, ttl, problems
}

// proveDenial checks that qname/qtype does not exist, by NSEC (RFC 4035
// 5.4) or NSEC3 (RFC 5155 8), in the authority section of msg.
func proveDenial(msg *dns.Msg, qname string, qtype uint16, zs zoneState, now time.Time) denial {
	nsecs, nsec3s, ttl, problems := proofRecords(msg, zs, now)
	var d denial
	switch {
	case len(nsecs) > 0:
		d = nsecDenial(nsecs, qname, qtype, zs.Zone)
	case len(nsec3s) > 0:
		d = nsec3Denial(nsec3s, qname, qtype, zs.Zone)
	default:
		d.why = "no signed NSEC or NSEC3 records"
	}
	if d.kind == denyNone && len(problems) > 0 {
		d.why += " (" + strings.Join(problems, "; ") + ")"
	}
	d.ttl = ttl
	return d
}

// proveNoExactMatch checks, for an answer expanded from the wildcard under
// closest, that qname itself does not exist (RFC 4035 5.3.4, RFC 5155 8.8).
func proveNoExactMatch(msg *dns.Msg, qname, closest string, zs zoneState, now time.Time) denial {
	nsecs, nsec3s, ttl, problems := proofRecords(msg, zs, now)
	d := denial{ttl: ttl, why: "no signed NSEC or NSEC3 covers the name"}
	for _, n := range nsecs {
		if nsecCovers(n, qname) && closestEncloserOf(qname, n) == closest {
			return denial{kind: denyNXDomain, ttl: ttl, how: "NSEC " + n.Hdr.Name + " covers the name"}
		}
	}
	if len(nsec3s) > 0 {
		if reason := nsec3Unusable(nsec3s); reason != "" {
			return denial{kind: denyInsecure, ttl: ttl, why: reason}
		}
		nc := nextCloser(qname, closest)
		if cover := nsec3Cover(nsec3s, nc, zs.Zone); cover != nil {
			return denial{kind: denyNXDomain, ttl: ttl, how: "NSEC3 " + cover.Hdr.Name + " covers the next closer name " + nc}
		}
	}
	if len(problems) > 0 {
		d.why += " (" + strings.Join(problems, "; ") + ")"
	}
	return d
}

func nsecDenial(nsecs []*dns.NSEC, qname string, qtype uint16, zone string) denial {
	for _, n := range nsecs {
		if canonical(n.Hdr.Name) != qname {
			continue
		}
		if why := bitmapDenies(n.TypeBitMap, qtype); why != "" {
			return denial{why: "NSEC at " + qname + " " + why}
		}
		return denial{kind: denyNoData, delegation: qtype == dns.TypeDS && hasType(n.TypeBitMap, dns.TypeNS),
			how: fmt.Sprintf("NSEC at %s lists no %s", qname, dns.TypeToString[qtype])}
	}
	var cover *dns.NSEC
	for _, n := range nsecs {
		if nsecCovers(n, qname) {
			cover = n
			break
		}
	}
	if cover == nil {
		return denial{why: "no NSEC matches or covers " + qname}
	}
	owner := canonical(cover.Hdr.Name)
	if owner != zone && dns.IsSubDomain(owner, qname) &&
		(hasType(cover.TypeBitMap, dns.TypeNS) && !hasType(cover.TypeBitMap, dns.TypeSOA) || hasType(cover.TypeBitMap, dns.TypeDNAME)) {
		return denial{why: "the covering NSEC " + owner + " is a delegation or DNAME above the name"}
	}
	next := canonical(cover.NextDomain)
	if next != qname && dns.IsSubDomain(qname, next) {
		// qname is an empty non-terminal: it exists, with no records at all.
		return denial{kind: denyNoData, how: "NSEC " + owner + " shows " + qname + " is an empty non-terminal"}
	}
	ce := closestEncloserOf(qname, cover)
	wildcard := "*." + ce
	if ce == "." {
		wildcard = "*."
	}
	for _, n := range nsecs {
		if canonical(n.Hdr.Name) == wildcard {
			if why := bitmapDenies(n.TypeBitMap, qtype); why != "" {
				return denial{why: "the wildcard " + wildcard + " " + why}
			}
			return denial{kind: denyNoData, how: fmt.Sprintf("NSEC %s covers the name and the wildcard %s lists no %s", owner, wildcard, dns.TypeToString[qtype])}
		}
	}
	for _, n := range nsecs {
		if nsecCovers(n, wildcard) {
			return denial{kind: denyNXDomain, how: fmt.Sprintf("NSEC %s covers the name, NSEC %s covers %s", owner, n.Hdr.Name, wildcard)}
		}
	}
	return denial{why: "no NSEC proves that " + wildcard + " does not exist"}
}

func nsec3Denial(nsec3s []*dns.NSEC3, qname string, qtype uint16, zone string) denial {
	if reason := nsec3Unusable(nsec3s); reason != "" {
		return denial{kind: denyInsecure, why: reason}
	}
	if m := nsec3Match(nsec3s, qname, zone); m != nil {
		if why := bitmapDenies(m.TypeBitMap, qtype); why != "" {
			return denial{why: "NSEC3 matching " + qname + " " + why}
		}
		return denial{kind: denyNoData, delegation: qtype == dns.TypeDS && hasType(m.TypeBitMap, dns.TypeNS),
			how: fmt.Sprintf("NSEC3 %s matches %s and lists no %s", m.Hdr.Name, qname, dns.TypeToString[qtype])}
	}
	// The closest encloser proof (RFC 5155 8.3): the longest existing
	// ancestor matches an NSEC3, and the next name down is covered.
	var ce string
	var ceMatch *dns.NSEC3
	for name := parentName(qname); ; name = parentName(name) {
		if !dns.IsSubDomain(zone, name) {
			break
		}
		if m := nsec3Match(nsec3s, name, zone); m != nil {
			ce, ceMatch = name, m
			break
		}
		if name == zone || name == "." {
			break
		}
	}
	if ceMatch == nil {
		return denial{why: "no NSEC3 proves a closest encloser of " + qname}
	}
	if canonical(ce) != zone && (hasType(ceMatch.TypeBitMap, dns.TypeNS) && !hasType(ceMatch.TypeBitMap, dns.TypeSOA) || hasType(ceMatch.TypeBitMap, dns.TypeDNAME)) {
		return denial{why: "the closest encloser " + ce + " is a delegation or DNAME"}
	}
	nc := nextCloser(qname, ce)
	cover := nsec3Cover(nsec3s, nc, zone)
	if cover == nil {
		return denial{why: "no NSEC3 covers the next closer name " + nc}
	}
	optOut := cover.Flags&1 == 1
	if qtype == dns.TypeDS && optOut {
		// RFC 5155 8.6: an opt-out span may hide an unsigned delegation.
		return denial{kind: denyInsecure, why: "NSEC3 opt-out covers " + nc + " (insecure delegation)"}
	}
	wildcard := "*." + ce
	if m := nsec3Match(nsec3s, wildcard, zone); m != nil {
		if why := bitmapDenies(m.TypeBitMap, qtype); why != "" {
			return denial{why: "the wildcard " + wildcard + " " + why}
		}
		return denial{kind: denyNoData, how: fmt.Sprintf("NSEC3 closest encloser %s; the wildcard %s lists no %s", ce, wildcard, dns.TypeToString[qtype])}
	}
	if nsec3Cover(nsec3s, wildcard, zone) == nil {
		return denial{why: "no NSEC3 covers the wildcard " + wildcard}
	}
	if optOut {
		return denial{kind: denyInsecure, why: "NSEC3 opt-out covers " + nc + ": the name may exist as an unsigned delegation"}
	}
	return denial{kind: denyNXDomain, how: fmt.Sprintf("NSEC3 closest encloser %s, next closer %s covered, wildcard %s covered", ce, nc, wildcard)}
}

// nsec3Unusable says why a set of NSEC3 records cannot give a Secure proof:
// an unknown hash, mixed parameters, or too many iterations.
func nsec3Unusable(nsec3s []*dns.NSEC3) string {
	first := nsec3s[0]
	for _, n := range nsec3s {
		if n.Hash != dns.SHA1 {
			return fmt.Sprintf("NSEC3 hash algorithm %d is not supported", n.Hash)
		}
		if n.Iterations != first.Iterations || !strings.EqualFold(n.Salt, first.Salt) {
			return "NSEC3 records with different parameters"
		}
	}
	if first.Iterations > maxNSEC3Iterations {
		return fmt.Sprintf("NSEC3 with %d iterations (more than %d, RFC 9276)", first.Iterations, maxNSEC3Iterations)
	}
	return ""
}

// nsec3Match and nsec3Cover keep to NSEC3 records of zone: a record from
// another zone proves nothing about this one.
func nsec3Match(nsec3s []*dns.NSEC3, name, zone string) *dns.NSEC3 {
	for _, n := range nsec3s {
		if parentName(canonical(n.Hdr.Name)) == zone && n.Match(name) {
			return n
		}
	}
	return nil
}

func nsec3Cover(nsec3s []*dns.NSEC3, name, zone string) *dns.NSEC3 {
	for _, n := range nsec3s {
		if parentName(canonical(n.Hdr.Name)) == zone && n.Cover(name) {
			return n
		}
	}
	return nil
}

// bitmapDenies says why a type bitmap at the name fails to deny qtype, or ""
// when it does deny it.
func bitmapDenies(types []uint16, qtype uint16) string {
	switch {
	case hasType(types, qtype):
		return "lists " + dns.TypeToString[qtype]
	case qtype != dns.TypeCNAME && hasType(types, dns.TypeCNAME):
		return "lists a CNAME"
	case qtype == dns.TypeDS && hasType(types, dns.TypeSOA):
		return "is from the child zone's apex, which cannot deny a DS"
	case qtype != dns.TypeDS && hasType(types, dns.TypeNS) && !hasType(types, dns.TypeSOA):
		return "is from the parent side of a delegation"
	}
	return ""
}

func hasType(types []uint16, t uint16) bool { return slices.Contains(types, t) }

// nsecCovers reports whether name falls strictly between the owner and the
// next name of n in canonical order, the last NSEC wrapping to the apex.
func nsecCovers(n *dns.NSEC, name string) bool {
	owner, next := canonical(n.Hdr.Name), canonical(n.NextDomain)
	if compareCanonical(owner, name) >= 0 {
		return false
	}
	if compareCanonical(owner, next) >= 0 { // the last NSEC of the zone
		return dns.IsSubDomain(next, name)
	}
	return compareCanonical(name, next) < 0
}

// closestEncloserOf is the longest ancestor of qname that the covering NSEC
// shows to exist (RFC 4035 5.4).
func closestEncloserOf(qname string, cover *dns.NSEC) string {
	n := max(dns.CompareDomainName(qname, cover.Hdr.Name), dns.CompareDomainName(qname, cover.NextDomain))
	return lastLabels(qname, n)
}

// nextCloser is the ancestor of qname one label longer than ce.
func nextCloser(qname, ce string) string {
	return lastLabels(qname, dns.CountLabel(ce)+1)
}

// compareCanonical orders names as RFC 4034 6.1 does: label by label from
// the right, each compared as lower-case bytes.
func compareCanonical(a, b string) int {
	la, lb := dns.SplitDomainName(strings.ToLower(a)), dns.SplitDomainName(strings.ToLower(b))
	for i, j := len(la)-1, len(lb)-1; i >= 0 && j >= 0; i, j = i-1, j-1 {
		if c := strings.Compare(unescape(la[i]), unescape(lb[j])); c != 0 {
			return c
		}
	}
	return len(la) - len(lb)
}

// unescape turns the presentation escapes of a label (\. and \DDD) into the
// bytes they stand for, so that ordering follows the wire form.
func unescape(label string) string {
	if !strings.Contains(label, `\`) {
		return label
	}
	var b strings.Builder
	for i := 0; i < len(label); i++ {
		if label[i] != '\\' || i+1 >= len(label) {
			b.WriteByte(label[i])
			continue
		}
		if i+3 < len(label) && isDigit(label[i+1]) && isDigit(label[i+2]) && isDigit(label[i+3]) {
			b.WriteByte(byte((int(label[i+1]-'0')*100 + int(label[i+2]-'0')*10 + int(label[i+3]-'0')) & 0xff))
			i += 3
			continue
		}
		b.WriteByte(label[i+1])
		i++
	}
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
