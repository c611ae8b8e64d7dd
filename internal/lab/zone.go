package lab

import (
	"crypto"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Zone is one zone the server answers for, signed by its own key (one
// combined key-signing and zone-signing key) or unsigned. Every change
// re-signs the zone at once, so that a failure is returned by the change
// that caused it.
type Zone struct {
	Origin string

	mu         sync.Mutex
	algorithm  uint8 // 0: unsigned
	nsec3      bool
	optOut     bool
	iterations uint16
	inception  time.Time
	expiration time.Time

	key    *dns.DNSKEY
	signer crypto.Signer

	records map[string]map[uint16][]dns.RR // owner → type → RRset
	signed  bool
	sigs    map[string]map[uint16][]dns.RR // owner → covered type → RRSIGs
	nsecs   map[string]dns.RR              // owner → NSEC (NSEC mode)
	chain   []*dns.NSEC3                   // sorted by hash (NSEC3 mode)
}

// ZoneOption changes how a zone is signed.
type ZoneOption func(*Zone)

// WithNSEC3 denies existence with NSEC3 (SHA-1, no salt, the given
// iterations), with opt-out for unsigned delegations when optOut is set.
func WithNSEC3(iterations uint16, optOut bool) ZoneOption {
	return func(z *Zone) { z.nsec3, z.iterations, z.optOut = true, iterations, optOut }
}

// WithValidity sets the signature validity window.
func WithValidity(inception, expiration time.Time) ZoneOption {
	return func(z *Zone) { z.inception, z.expiration = inception, expiration }
}

// NewZone returns a zone with records in zone-file syntax (owner names
// relative to origin are allowed). algorithm is a DNSSEC algorithm number
// (dns.ECDSAP256SHA256, dns.RSASHA256, dns.ED25519, ...) or 0 for unsigned.
// An SOA is added when the records have none.
func NewZone(origin string, algorithm uint8, records string, opts ...ZoneOption) (*Zone, error) {
	z := &Zone{
		Origin: dns.CanonicalName(origin), algorithm: algorithm,
		inception: time.Now().Add(-time.Hour), expiration: time.Now().Add(30 * 24 * time.Hour),
		records: map[string]map[uint16][]dns.RR{},
	}
	for _, o := range opts {
		o(z)
	}
	z.records[z.Origin] = map[uint16][]dns.RR{}
	if algorithm != 0 {
		if err := z.newKey(); err != nil {
			return nil, err
		}
	}
	if err := z.Add(records); err != nil {
		return nil, err
	}
	if len(z.records[z.Origin][dns.TypeSOA]) == 0 {
		apex := strings.TrimSuffix(z.Origin, ".")
		if err := z.Add(fmt.Sprintf("%s 3600 IN SOA %s %s 1 7200 3600 1209600 300", z.Origin, dns.Fqdn("ns."+apex), dns.Fqdn("hostmaster."+apex))); err != nil {
			return nil, err
		}
	}
	return z, nil
}

func (z *Zone) newKey() error {
	bits := 256
	switch z.algorithm {
	case dns.RSASHA1, dns.RSASHA1NSEC3SHA1, dns.RSASHA256, dns.RSASHA512:
		bits = 1024 // small for speed; strength is not what these tests measure
	case dns.ECDSAP384SHA384:
		bits = 384
	}
	key := &dns.DNSKEY{Hdr: dns.RR_Header{Name: z.Origin, Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 3600},
		Flags: 257, Protocol: 3, Algorithm: z.algorithm}
	priv, err := key.Generate(bits)
	if err != nil {
		return fmt.Errorf("zone %s: generate key: %w", z.Origin, err)
	}
	z.key, z.signer = key, priv.(crypto.Signer)
	z.records[z.Origin][dns.TypeDNSKEY] = []dns.RR{key}
	z.signed = false
	return nil
}

// Add adds records in zone-file syntax.
func (z *Zone) Add(records string) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	zp := dns.NewZoneParser(strings.NewReader(records), z.Origin, "")
	zp.SetDefaultTTL(300)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		if err := z.addRR(rr); err != nil {
			return err
		}
	}
	if err := zp.Err(); err != nil {
		return fmt.Errorf("zone %s: %w", z.Origin, err)
	}
	return z.sign()
}

func (z *Zone) addRR(rr dns.RR) error {
	h := rr.Header()
	h.Name = dns.CanonicalName(h.Name)
	if !dns.IsSubDomain(z.Origin, h.Name) {
		return fmt.Errorf("zone %s: %s is outside the zone", z.Origin, h.Name)
	}
	if z.records[h.Name] == nil {
		z.records[h.Name] = map[uint16][]dns.RR{}
	}
	z.records[h.Name][h.Rrtype] = append(z.records[h.Name][h.Rrtype], rr)
	z.signed = false
	return nil
}

// Remove deletes the RRset of rrtype at owner.
func (z *Zone) Remove(owner string, rrtype uint16) error {
	z.mu.Lock()
	defer z.mu.Unlock()
	owner = dns.CanonicalName(owner)
	delete(z.records[owner], rrtype)
	if len(z.records[owner]) == 0 {
		delete(z.records, owner)
	}
	z.signed = false
	return z.sign()
}

// Delegate makes child a delegated zone of z: NS records, and a DS for the
// child's key when the child is signed.
func (z *Zone) Delegate(child *Zone) error {
	if err := z.Add(fmt.Sprintf("%s 3600 IN NS ns.%s", child.Origin, strings.TrimPrefix(child.Origin, "."))); err != nil {
		return err
	}
	for _, ds := range child.DS() {
		z.mu.Lock()
		err := z.addRR(ds)
		if err == nil {
			err = z.sign()
		}
		z.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// DS returns the DS record (SHA-256) of the zone's key, none when unsigned.
func (z *Zone) DS() []dns.RR {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.key == nil {
		return nil
	}
	ds := z.key.ToDS(dns.SHA256)
	ds.Hdr.Ttl = 3600
	return []dns.RR{ds}
}

// Anchor returns the zone's DS in zone-file syntax, for a trust anchor file.
func (z *Zone) Anchor() string {
	var b strings.Builder
	for _, ds := range z.DS() {
		b.WriteString(ds.String() + "\n")
	}
	return b.String()
}

// Rekey replaces the zone's key, so that the parent's DS no longer matches.
func (z *Zone) Rekey() error {
	z.mu.Lock()
	defer z.mu.Unlock()
	if err := z.newKey(); err != nil {
		return err
	}
	return z.sign()
}

// Key returns the zone's DNSKEY (nil when unsigned).
func (z *Zone) Key() *dns.DNSKEY {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.key
}

// isCut reports whether name is a delegation point below the apex.
func (z *Zone) isCut(name string) bool {
	return name != z.Origin && len(z.records[name][dns.TypeNS]) > 0
}

// belowCut reports whether name lies under a delegation (glue, or the
// child's data): not authoritative here.
func (z *Zone) belowCut(name string) bool {
	for n := parent(name); n != z.Origin && dns.IsSubDomain(z.Origin, n); n = parent(n) {
		if z.isCut(n) {
			return true
		}
	}
	return false
}

// exists reports whether name exists in the zone: it owns records, or it is
// an empty non-terminal above some that do.
func (z *Zone) exists(name string) bool {
	if len(z.records[name]) > 0 {
		return true
	}
	for owner := range z.records {
		if owner != name && dns.IsSubDomain(name, owner) {
			return true
		}
	}
	return false
}

func (z *Zone) sign() error {
	if z.signed || z.algorithm == 0 {
		return nil
	}
	z.signed = true
	z.sigs = map[string]map[uint16][]dns.RR{}
	z.nsecs = map[string]dns.RR{}
	z.chain = nil
	delete(z.records[z.Origin], dns.TypeNSEC3PARAM)
	if z.nsec3 {
		z.records[z.Origin][dns.TypeNSEC3PARAM] = []dns.RR{&dns.NSEC3PARAM{
			Hdr:  dns.RR_Header{Name: z.Origin, Rrtype: dns.TypeNSEC3PARAM, Class: dns.ClassINET, Ttl: 0},
			Hash: dns.SHA1, Iterations: z.iterations}}
	}
	var names []string
	for owner := range z.records {
		if z.belowCut(owner) {
			continue
		}
		names = append(names, owner)
		for rrtype, rrs := range z.records[owner] {
			if z.isCut(owner) && rrtype != dns.TypeDS {
				continue // the NS of a delegation is not signed by the parent
			}
			if err := z.addSig(owner, rrtype, rrs); err != nil {
				return err
			}
		}
	}
	sort.Slice(names, func(i, j int) bool { return compareCanonical(names[i], names[j]) < 0 })
	if z.nsec3 {
		return z.buildNSEC3(names)
	}
	for i, owner := range names {
		next := names[(i+1)%len(names)]
		n := &dns.NSEC{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: 300},
			NextDomain: next, TypeBitMap: z.types(owner, dns.TypeNSEC)}
		z.nsecs[owner] = n
		if err := z.addSig(owner, dns.TypeNSEC, []dns.RR{n}); err != nil {
			return err
		}
	}
	return nil
}

// types lists the types at owner for a bitmap, with RRSIG and the denial type.
func (z *Zone) types(owner string, denial uint16) []uint16 {
	var out []uint16
	for t := range z.records[owner] {
		out = append(out, t)
	}
	if len(out) > 0 && !(z.isCut(owner) && len(z.records[owner][dns.TypeDS]) == 0) {
		out = append(out, dns.TypeRRSIG)
	}
	if denial == dns.TypeNSEC {
		out = append(out, dns.TypeNSEC, dns.TypeRRSIG)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (z *Zone) buildNSEC3(names []string) error {
	// Every authoritative name and every empty non-terminal between it and
	// the apex gets a hash; unsigned delegations are left out under opt-out.
	all := map[string]bool{}
	for _, owner := range names {
		if z.optOut && z.isCut(owner) && len(z.records[owner][dns.TypeDS]) == 0 {
			continue
		}
		for n := owner; dns.IsSubDomain(z.Origin, n); n = parent(n) {
			all[n] = true
			if n == z.Origin {
				break
			}
		}
	}
	type hashed struct {
		hash, name string
	}
	var hs []hashed
	for n := range all {
		hs = append(hs, hashed{dns.HashName(n, dns.SHA1, z.iterations, ""), n})
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].hash < hs[j].hash })
	var flags uint8
	if z.optOut {
		flags = 1
	}
	for i, h := range hs {
		n := &dns.NSEC3{Hdr: dns.RR_Header{Name: strings.ToLower(h.hash) + "." + z.Origin, Rrtype: dns.TypeNSEC3, Class: dns.ClassINET, Ttl: 300},
			Hash: dns.SHA1, Flags: flags, Iterations: z.iterations, Salt: "", SaltLength: 0,
			NextDomain: hs[(i+1)%len(hs)].hash, HashLength: 20, TypeBitMap: z.types(h.name, dns.TypeNSEC3)}
		z.chain = append(z.chain, n)
		if err := z.addSig(n.Hdr.Name, dns.TypeNSEC3, []dns.RR{n}); err != nil {
			return err
		}
	}
	return nil
}

func (z *Zone) addSig(owner string, rrtype uint16, rrs []dns.RR) error {
	labels := uint8(dns.CountLabel(owner))
	if strings.HasPrefix(owner, "*.") {
		labels--
	}
	sig := &dns.RRSIG{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: rrs[0].Header().Ttl},
		TypeCovered: rrtype, Algorithm: z.algorithm, Labels: labels, OrigTtl: rrs[0].Header().Ttl,
		Expiration: uint32(z.expiration.Unix()), Inception: uint32(z.inception.Unix()),
		KeyTag: z.key.KeyTag(), SignerName: z.Origin}
	if err := sig.Sign(z.signer, rrs); err != nil {
		return fmt.Errorf("zone %s: sign %s %s: %w", z.Origin, owner, dns.TypeToString[rrtype], err)
	}
	if z.sigs[owner] == nil {
		z.sigs[owner] = map[uint16][]dns.RR{}
	}
	z.sigs[owner][rrtype] = []dns.RR{sig}
	return nil
}

// rrset returns the RRset and, when do is set, its signatures.
func (z *Zone) rrset(owner string, rrtype uint16, do bool) []dns.RR {
	out := slices.Clone(z.records[owner][rrtype])
	if do && len(out) > 0 {
		out = append(out, z.sigs[owner][rrtype]...)
	}
	return out
}

// result is what a zone says to one question.
type result struct {
	answer, authority []dns.RR
	rcode             int
	cname             string
}

// lookup answers name/qtype from the zone as an authoritative server would,
// with DNSSEC records and proofs when do is set.
func (z *Zone) lookup(name string, qtype uint16, do bool) result {
	z.mu.Lock()
	defer z.mu.Unlock()
	do = do && z.algorithm != 0
	var r result
	soa := z.rrset(z.Origin, dns.TypeSOA, do)
	for n := parent(name); dns.IsSubDomain(z.Origin, n) && n != z.Origin; n = parent(n) {
		if dname := z.rrset(n, dns.TypeDNAME, do); len(dname) > 0 {
			// RFC 6672: the DNAME, and an unsigned CNAME synthesised from it.
			target := strings.TrimSuffix(name, n) + dns.CanonicalName(dname[0].(*dns.DNAME).Target)
			r.answer = append(dname, &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 0}, Target: target})
			r.cname = target
			return r
		}
	}
	if z.exists(name) {
		if rrs := z.rrset(name, qtype, do); len(rrs) > 0 {
			r.answer = rrs
			return r
		}
		if cname := z.rrset(name, dns.TypeCNAME, do); len(cname) > 0 && qtype != dns.TypeCNAME {
			r.answer = cname
			r.cname = dns.CanonicalName(cname[0].(*dns.CNAME).Target)
			return r
		}
		r.authority = append(r.authority, soa...)
		if do {
			r.authority = append(r.authority, z.noData(name)...)
		}
		return r
	}
	ce := z.closestEncloser(name)
	wildcard := "*." + ce
	if z.exists(wildcard) {
		rrs := z.rrset(wildcard, qtype, do)
		if len(rrs) == 0 && qtype != dns.TypeCNAME {
			if rrs = z.rrset(wildcard, dns.TypeCNAME, do); len(rrs) > 0 {
				r.cname = dns.CanonicalName(rrs[0].(*dns.CNAME).Target)
			}
		}
		if len(rrs) > 0 {
			for _, rr := range rrs {
				rr = dns.Copy(rr)
				rr.Header().Name = name
				r.answer = append(r.answer, rr)
			}
			if do {
				r.authority = append(r.authority, z.cover(name, ce)...)
			}
			return r
		}
		r.authority = append(r.authority, soa...)
		if do {
			r.authority = append(r.authority, z.cover(name, ce)...)
			r.authority = append(r.authority, z.noData(wildcard)...)
		}
		return r
	}
	r.rcode = dns.RcodeNameError
	r.authority = append(r.authority, soa...)
	if do {
		r.authority = append(r.authority, z.cover(name, ce)...)
		r.authority = append(r.authority, z.coverName(wildcard)...)
	}
	return r
}

func (z *Zone) closestEncloser(name string) string {
	for n := parent(name); ; n = parent(n) {
		if n == z.Origin || z.exists(n) || n == "." {
			return n
		}
	}
}

// noData proves that the existing name has no records of the asked type.
func (z *Zone) noData(name string) []dns.RR {
	if !z.nsec3 {
		if n, ok := z.nsecs[name]; ok {
			return append([]dns.RR{n}, z.sigs[name][dns.TypeNSEC]...)
		}
		return z.coverName(name) // an empty non-terminal
	}
	if n := z.match3(name); n != nil {
		return z.with3(n)
	}
	// An unsigned delegation in an opt-out span: prove the closest encloser
	// and cover the next closer name with the opt-out record.
	ce := z.closestProvable(name)
	return append(z.with3(z.match3(ce)), z.with3(z.cover3(nextCloser(name, ce)))...)
}

// cover proves that name does not exist under the closest encloser ce.
func (z *Zone) cover(name, ce string) []dns.RR {
	if !z.nsec3 {
		return z.coverName(name)
	}
	return append(z.with3(z.match3(ce)), z.with3(z.cover3(nextCloser(name, ce)))...)
}

// coverName returns the NSEC (or NSEC3) whose span holds name.
func (z *Zone) coverName(name string) []dns.RR {
	if z.nsec3 {
		return z.with3(z.cover3(name))
	}
	var best string
	for owner := range z.nsecs {
		if compareCanonical(owner, name) < 0 && (best == "" || compareCanonical(owner, best) > 0) {
			best = owner
		}
	}
	if best == "" { // before the first name: the last NSEC wraps around
		for owner := range z.nsecs {
			if best == "" || compareCanonical(owner, best) > 0 {
				best = owner
			}
		}
	}
	return append([]dns.RR{z.nsecs[best]}, z.sigs[best][dns.TypeNSEC]...)
}

func (z *Zone) closestProvable(name string) string {
	for n := parent(name); ; n = parent(n) {
		if z.match3(n) != nil || n == z.Origin {
			return n
		}
	}
}

func (z *Zone) match3(name string) *dns.NSEC3 {
	for _, n := range z.chain {
		if n.Match(name) {
			return n
		}
	}
	return nil
}

func (z *Zone) cover3(name string) *dns.NSEC3 {
	for _, n := range z.chain {
		if n.Cover(name) {
			return n
		}
	}
	return nil
}

func (z *Zone) with3(n *dns.NSEC3) []dns.RR {
	if n == nil {
		return nil
	}
	return append([]dns.RR{n}, z.sigs[n.Hdr.Name][dns.TypeNSEC3]...)
}

func parent(name string) string {
	i, end := dns.NextLabel(name, 0)
	if end {
		return "."
	}
	return name[i:]
}

func nextCloser(name, ce string) string {
	labels := dns.SplitDomainName(name)
	n := dns.CountLabel(ce) + 1
	return dns.Fqdn(strings.Join(labels[len(labels)-n:], "."))
}

// compareCanonical orders names as RFC 4034 6.1 does (escapes aside, which
// test zones do not use).
func compareCanonical(a, b string) int {
	la, lb := dns.SplitDomainName(strings.ToLower(a)), dns.SplitDomainName(strings.ToLower(b))
	for i, j := len(la)-1, len(lb)-1; i >= 0 && j >= 0; i, j = i-1, j-1 {
		if c := strings.Compare(la[i], lb[j]); c != 0 {
			return c
		}
	}
	return len(la) - len(lb)
}

// Sign returns an RRSIG over rrs made with the zone's key, for tests that
// forge or misplace signatures.
func (z *Zone) Sign(rrs []dns.RR) (*dns.RRSIG, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	owner := rrs[0].Header().Name
	sig := &dns.RRSIG{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: rrs[0].Header().Ttl},
		TypeCovered: rrs[0].Header().Rrtype, Algorithm: z.algorithm, Labels: uint8(dns.CountLabel(owner)),
		OrigTtl: rrs[0].Header().Ttl, Expiration: uint32(z.expiration.Unix()), Inception: uint32(z.inception.Unix()),
		KeyTag: z.key.KeyTag(), SignerName: z.Origin}
	if err := sig.Sign(z.signer, rrs); err != nil {
		return nil, fmt.Errorf("zone %s: sign: %w", z.Origin, err)
	}
	return sig, nil
}
