package resolver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// zoneState says, for one name, which zone it lies in as far as DNSSEC is
// concerned: the deepest zone above it that has validated keys, or the
// insecure delegation (or bogus link) that stops the chain of trust.
type zoneState struct {
	Zone        string
	Security    Security
	Keys        []*dns.DNSKEY // the zone's validated keys, when Secure
	Nonexistent bool          // the name is proven not to exist (so nothing below it does)
	Reason      string        // why not Secure
	Proof       []string      // the chain, from the anchor down
	TTL         time.Duration
}

// clockSkew is how far outside its validity window a signature is still
// accepted, for the clocks of signers and of this host.
const clockSkew = 5 * time.Minute

// maxNSEC3Iterations: above it, NSEC3 proofs are treated as insecure rather
// than computed (RFC 9276 3.2), which bounds the work an attacker can cause.
const maxNSEC3Iterations = 150

// maxAliases bounds an alias chain (CNAME and DNAME links), and
// maxRequeries how often a chain that the upstream cut short is asked for
// again from where it stopped.
const (
	maxAliases   = 16
	maxRequeries = 8
)

// resolve asks upstream and judges the answer.
func (c *Client) resolve(ctx context.Context, name string, qtype uint16) (Answer, error) {
	msg, err := c.exchange(ctx, name, qtype)
	if err != nil {
		return Answer{}, err
	}
	if c.mode == Validate {
		return c.validate(ctx, msg, name, qtype)
	}
	// Off and TrustAD: the chain is followed without validation; Secure
	// only when the upstream vouched (AD) for every response used.
	ans := Answer{Name: name, Type: qtype, Security: Insecure}
	ad := msg.AuthenticatedData
	ttl := c.maxTTL
	owner, asked, requeries := name, name, 0
	for {
		if rrs, _ := rrsetAt(msg.Answer, owner, qtype); len(rrs) > 0 {
			ans.Records, ttl = rrs, min(ttl, rrsetTTL(rrs))
			break
		}
		next := ""
		if qtype != dns.TypeCNAME {
			if cname, _ := rrsetAt(msg.Answer, owner, dns.TypeCNAME); len(cname) > 0 {
				next, ttl = canonical(cname[0].(*dns.CNAME).Target), min(ttl, rrsetTTL(cname))
			}
		}
		if next == "" {
			if owner != asked && !answersFor(msg, owner) {
				if msg, err = c.requery(ctx, name, owner, qtype, &requeries); err != nil {
					return Answer{}, err
				}
				asked, ad = owner, ad && msg.AuthenticatedData
				continue
			}
			ans.NXDomain = msg.Rcode == dns.RcodeNameError
			ttl = min(ttl, negativeTTL(msg))
			break
		}
		if next == name || slices.Contains(ans.Aliases, next) {
			// A loop: no records, and nothing worth caching.
			ans.Aliases = append(ans.Aliases, next)
			ttl = 0
			break
		}
		if len(ans.Aliases) == maxAliases {
			return Answer{}, fmt.Errorf("%s %s: %w: alias chain longer than %d names", dns.TypeToString[qtype], name, ErrTemporary, maxAliases)
		}
		ans.Aliases = append(ans.Aliases, next)
		owner = next
	}
	ans.TTL = ttl
	switch {
	case c.mode == Off:
		ans.Reason = "DNSSEC validation is off (dns.dnssec: off)"
	case ad:
		ans.Security = Secure
		ans.Proof = []string{"AD bit set by the upstream resolver (dns.dnssec: trust-ad)"}
	default:
		ans.Reason = "the upstream resolver did not set the AD bit"
	}
	return ans, nil
}

// answersFor reports whether msg, whose alias chain ends at owner without
// records of the type asked, says so about owner itself: by NXDOMAIN
// (which is about the last name of the chain, RFC 6604 2.1), or by the SOA
// of a negative answer from a zone that encloses owner (RFC 2308 2.2). A
// recursive server that stops following a long chain returns the chain so
// far with neither, and its end must be asked for again: taken as it is,
// it would read as "no records" (an MX lookup falling back to the
// domain's address, or a Bogus answer for want of a denial proof).
func answersFor(msg *dns.Msg, owner string) bool {
	if msg.Rcode == dns.RcodeNameError {
		return true
	}
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok && rr.Header().Class == dns.ClassINET && dns.IsSubDomain(canonical(soa.Hdr.Name), owner) {
			return true
		}
	}
	return false
}

// requery asks again for the end of an alias chain that the upstream cut
// short, at most maxRequeries times per question: past that the answer is
// a temporary failure, never "no records".
func (c *Client) requery(ctx context.Context, name, owner string, qtype uint16, requeries *int) (*dns.Msg, error) {
	if *requeries == maxRequeries {
		return nil, fmt.Errorf("%s %s: %w: the upstream cut the alias chain short %d times (last at %s)",
			dns.TypeToString[qtype], name, ErrTemporary, *requeries+1, owner)
	}
	*requeries++
	return c.exchange(ctx, owner, qtype)
}

// validation collects the status of an answer as its links are checked.
type validation struct {
	ans *Answer
	now time.Time
}

func (v *validation) weaken(s Security, reason string) {
	if weaker(s, v.ans.Security) != v.ans.Security || v.ans.Reason == "" && s != Secure {
		v.ans.Security = weaker(s, v.ans.Security)
		v.ans.Reason = reason
	}
}

func (v *validation) proof(lines ...string) {
	for _, l := range lines {
		if !slices.Contains(v.ans.Proof, l) {
			v.ans.Proof = append(v.ans.Proof, l)
		}
	}
}

func (v *validation) ttl(d time.Duration) { v.ans.TTL = minDuration(v.ans.TTL, d) }

// validate checks every link of the answer to name/qtype: each CNAME and
// DNAME on the way, then the records or the proof that there are none. A
// chain that the upstream cut short is asked for again from where it
// stopped (see answersFor).
func (c *Client) validate(ctx context.Context, msg *dns.Msg, name string, qtype uint16) (Answer, error) {
	ans := Answer{Name: name, Type: qtype, Security: Secure, TTL: c.maxTTL}
	v := &validation{ans: &ans, now: c.now()}
	owner, asked, requeries := name, name, 0
	for {
		if rrs, sigs := rrsetAt(msg.Answer, owner, qtype); len(rrs) > 0 {
			if err := c.link(ctx, v, msg, owner, qtype, rrs, sigs); err != nil {
				return Answer{}, err
			}
			ans.Records = rrs
			return ans, nil
		}
		next, err := c.alias(ctx, v, msg, owner, qtype)
		if err != nil {
			return Answer{}, err
		}
		if next == "" {
			if owner != asked && !answersFor(msg, owner) {
				if msg, err = c.requery(ctx, name, owner, qtype, &requeries); err != nil {
					return Answer{}, err
				}
				asked = owner
				continue
			}
			break
		}
		if slices.Contains(ans.Aliases, next) || next == name {
			v.weaken(Bogus, "alias loop at "+next)
			return ans, nil
		}
		if len(ans.Aliases) == maxAliases {
			return Answer{}, fmt.Errorf("%s %s: %w: alias chain longer than %d names", dns.TypeToString[qtype], name, ErrTemporary, maxAliases)
		}
		ans.Aliases = append(ans.Aliases, next)
		owner = next
	}
	return ans, c.negative(ctx, v, msg, owner, qtype)
}

// alias follows one CNAME or DNAME step from owner, validating it, and
// returns the next name ("" when there is none).
func (c *Client) alias(ctx context.Context, v *validation, msg *dns.Msg, owner string, qtype uint16) (string, error) {
	if qtype != dns.TypeDNAME {
		for _, rr := range msg.Answer {
			d, ok := rr.(*dns.DNAME)
			dOwner := canonical(rr.Header().Name)
			if !ok || rr.Header().Class != dns.ClassINET || dOwner == owner || !dns.IsSubDomain(dOwner, owner) {
				continue
			}
			rrs, sigs := rrsetAt(msg.Answer, dOwner, dns.TypeDNAME)
			if err := c.link(ctx, v, msg, dOwner, dns.TypeDNAME, rrs, sigs); err != nil {
				return "", err
			}
			// The CNAME a server synthesises from a DNAME is unsigned: the
			// target is computed here instead of trusting it (RFC 6672 5.3.3).
			target := strings.TrimSuffix(owner, dOwner) + canonical(d.Target)
			if _, ok := dns.IsDomainName(target); !ok || len(target) > 255 {
				v.weaken(Bogus, "DNAME at "+dOwner+" makes an invalid name")
				return "", nil
			}
			return target, nil
		}
	}
	if qtype == dns.TypeCNAME {
		return "", nil
	}
	cname, sigs := rrsetAt(msg.Answer, owner, dns.TypeCNAME)
	if len(cname) == 0 {
		return "", nil
	}
	if err := c.link(ctx, v, msg, owner, dns.TypeCNAME, cname, sigs); err != nil {
		return "", err
	}
	return canonical(cname[0].(*dns.CNAME).Target), nil
}

// link validates one RRset of the answer against the zone it lies in.
func (c *Client) link(ctx context.Context, v *validation, msg *dns.Msg, owner string, rrtype uint16, rrs []dns.RR, sigs []*dns.RRSIG) error {
	zs, err := c.zoneFor(ctx, signingZoneOf(owner, rrtype))
	if err != nil {
		return err
	}
	v.proof(zs.Proof...)
	v.ttl(rrsetTTL(rrs))
	label := owner + " " + dns.TypeToString[rrtype]
	if zs.Security != Secure {
		v.weaken(zs.Security, zs.Reason)
		return nil
	}
	res, err := verifyRRset(rrs, sigs, zs, v.now)
	if err != nil {
		v.weaken(Bogus, label+": "+err.Error())
		return nil
	}
	v.ttl(res.ttl)
	v.proof(fmt.Sprintf("%s signed by %s key %d (%s)", label, zs.Zone, res.keyTag, dns.AlgorithmToString[res.algorithm]))
	if res.wildcard == "" {
		return nil
	}
	// A wildcard answer is only as good as the proof that the name itself
	// does not exist (RFC 4035 5.3.4).
	d := proveNoExactMatch(msg, owner, res.wildcard, zs, v.now)
	switch d.kind {
	case denyNXDomain:
		v.proof(fmt.Sprintf("%s expanded from *.%s; %s", label, res.wildcard, d.how))
		v.ttl(d.ttl)
	case denyInsecure:
		v.weaken(Insecure, label+": "+d.why)
	default:
		v.weaken(Bogus, label+": wildcard answer without proof that the name does not exist: "+d.why)
	}
	return nil
}

// negative judges an answer without the records asked for at owner.
func (c *Client) negative(ctx context.Context, v *validation, msg *dns.Msg, owner string, qtype uint16) error {
	v.ans.NXDomain = msg.Rcode == dns.RcodeNameError
	v.ttl(negativeTTL(msg))
	zs, err := c.zoneFor(ctx, signingZoneOf(owner, qtype))
	if err != nil {
		return err
	}
	v.proof(zs.Proof...)
	if zs.Security != Secure {
		v.weaken(zs.Security, zs.Reason)
		return nil
	}
	d := proveDenial(msg, owner, qtype, zs, v.now)
	label := owner + " " + dns.TypeToString[qtype]
	switch {
	case d.kind == denyInsecure:
		v.weaken(Insecure, label+": "+d.why)
	case d.kind == denyNXDomain && v.ans.NXDomain, d.kind == denyNoData && !v.ans.NXDomain:
		v.proof(label + ": " + d.how)
		v.ttl(d.ttl)
	case d.kind == denyNone:
		v.weaken(Bogus, label+": no valid proof of nonexistence: "+d.why)
	default:
		v.weaken(Bogus, fmt.Sprintf("%s: the response code (%s) contradicts the proof (%s)", label, dns.RcodeToString[msg.Rcode], d.how))
	}
	return nil
}

// signingZoneOf is the name whose zone signs owner/rrtype: a DS record
// belongs to the parent side of a zone cut.
func signingZoneOf(owner string, rrtype uint16) string {
	if rrtype == dns.TypeDS {
		return parentName(owner)
	}
	return owner
}

// zoneFor returns the zone state of name, walking down from a trust anchor
// one label at a time; each step is cached, and concurrent walks share work.
func (c *Client) zoneFor(ctx context.Context, name string) (zoneState, error) {
	name = canonical(name)
	zs, _, err := c.zones.get(ctx, name, func(ctx context.Context) (zoneState, time.Duration, error) {
		z, err := c.computeZone(ctx, name)
		ttl := min(z.TTL, c.maxTTL)
		if z.Security == Bogus {
			ttl = min(ttl, bogusTTL)
		}
		return z, ttl, err
	})
	return zs, err
}

func (c *Client) computeZone(ctx context.Context, name string) (zoneState, error) {
	if anchors, ok := c.anchors[name]; ok {
		return c.anchoredZone(ctx, name, anchors)
	}
	if name == "." {
		// The configured anchors say nothing of this name (a private anchor
		// below the root): nothing can ever be proven of it, so it counts
		// as unsigned, as a validator with no anchor for a name reports it.
		// Indeterminate is kept for answers that cannot be validated now
		// (the upstream strips DNSSEC), which must never lower a policy.
		return zoneState{Zone: ".", Security: Insecure, Reason: "no trust anchor covers this name", TTL: c.maxTTL}, nil
	}
	parent, err := c.zoneFor(ctx, parentName(name))
	if err != nil {
		return zoneState{}, err
	}
	if parent.Security != Secure || parent.Nonexistent {
		return parent, nil
	}
	return c.stepDown(ctx, name, parent)
}

// stepDown asks for the DS of name inside the secure zone parent: a
// validated DS makes name a secure zone; a proven absence makes it either
// an insecure delegation or just a name inside parent.
func (c *Client) stepDown(ctx context.Context, name string, parent zoneState) (zoneState, error) {
	msg, err := c.exchange(ctx, name, dns.TypeDS)
	if err != nil {
		return zoneState{}, err
	}
	now := c.now()
	if ds, sigs := rrsetAt(msg.Answer, name, dns.TypeDS); len(ds) > 0 {
		res, err := verifyRRset(ds, sigs, parent, now)
		if err == nil && res.wildcard != "" {
			err = errors.New("synthesised from a wildcard")
		}
		if err != nil {
			return bogus(parent, fmt.Sprintf("DS for %s: %v", name, err)), nil
		}
		proof := fmt.Sprintf("%s DS %s signed by %s key %d", name, describeDS(ds), parent.Zone, res.keyTag)
		return c.enterZone(ctx, name, ds, min(rrsetTTL(ds), res.ttl, parent.TTL), append(slices.Clone(parent.Proof), proof))
	}
	same := parent
	same.Proof = slices.Clone(parent.Proof)
	for _, rr := range msg.Answer {
		dOwner := canonical(rr.Header().Name)
		if _, ok := rr.(*dns.DNAME); !ok || rr.Header().Class != dns.ClassINET || dOwner == name || !dns.IsSubDomain(dOwner, name) {
			continue
		}
		// Below a DNAME nothing exists in this zone, so no zone cut either.
		dname, sigs := rrsetAt(msg.Answer, dOwner, dns.TypeDNAME)
		res, err := verifyRRset(dname, sigs, parent, now)
		if err != nil {
			return bogus(parent, fmt.Sprintf("DNAME at %s: %v", dOwner, err)), nil
		}
		same.Nonexistent = true
		same.TTL = min(parent.TTL, res.ttl, rrsetTTL(dname))
		return same, nil
	}
	if cname, sigs := rrsetAt(msg.Answer, name, dns.TypeCNAME); len(cname) > 0 {
		// An alias is never a zone cut.
		res, err := verifyRRset(cname, sigs, parent, now)
		if err != nil {
			return bogus(parent, fmt.Sprintf("CNAME at %s: %v", name, err)), nil
		}
		same.TTL = min(parent.TTL, res.ttl, rrsetTTL(cname))
		return same, nil
	}
	d := proveDenial(msg, name, dns.TypeDS, parent, now)
	switch d.kind {
	case denyNXDomain:
		same.Nonexistent = true
	case denyNoData:
		if d.delegation {
			return zoneState{Zone: name, Security: Insecure, TTL: min(parent.TTL, d.ttl),
				Reason: fmt.Sprintf("%s is an insecure delegation (%s)", name, d.how),
				Proof:  append(same.Proof, name+" is an insecure delegation: "+d.how)}, nil
		}
	case denyInsecure:
		return zoneState{Zone: name, Security: Insecure, TTL: min(parent.TTL, d.ttl),
			Reason: fmt.Sprintf("%s: %s", name, d.why),
			Proof:  append(same.Proof, name+": "+d.why)}, nil
	default:
		return bogus(parent, fmt.Sprintf("no valid proof that %s has no DS: %s", name, d.why)), nil
	}
	same.TTL = min(parent.TTL, d.ttl)
	return same, nil
}

// enterZone validates the DNSKEY set of zone against its validated DS set.
func (c *Client) enterZone(ctx context.Context, zone string, ds []dns.RR, ttl time.Duration, proof []string) (zoneState, error) {
	usable := usableDS(ds)
	if len(usable) == 0 {
		return zoneState{Zone: zone, Security: Insecure, TTL: ttl, Proof: proof,
			Reason: fmt.Sprintf("the DS records of %s use only unsupported algorithms or digests", zone)}, nil
	}
	return c.validateKeys(ctx, zone, usable, ttl, proof)
}

// anchoredZone validates the DNSKEY set of zone against configured trust anchors.
func (c *Client) anchoredZone(ctx context.Context, zone string, anchors []dns.RR) (zoneState, error) {
	var usable []dns.RR
	for _, a := range anchors {
		switch a := a.(type) {
		case *dns.DNSKEY:
			if algorithmSupported(a.Algorithm) {
				usable = append(usable, a)
			}
		case *dns.DS:
			usable = append(usable, usableDS([]dns.RR{a})...)
		}
	}
	if len(usable) == 0 {
		return zoneState{Zone: zone, Security: Insecure, TTL: c.maxTTL,
			Reason: "the trust anchors for " + zone + " use only unsupported algorithms"}, nil
	}
	return c.validateKeys(ctx, zone, usable, c.maxTTL, nil)
}

// validateKeys fetches the DNSKEY set of zone and accepts it when a key
// matching one of the authenticators (DS or DNSKEY records) signs it.
func (c *Client) validateKeys(ctx context.Context, zone string, authenticators []dns.RR, ttl time.Duration, proof []string) (zoneState, error) {
	msg, err := c.exchange(ctx, zone, dns.TypeDNSKEY)
	if err != nil {
		return zoneState{}, err
	}
	fail := func(why string) (zoneState, error) {
		return zoneState{Zone: zone, Security: Bogus, TTL: bogusTTL, Reason: why, Proof: proof}, nil
	}
	rrs, sigs := rrsetAt(msg.Answer, zone, dns.TypeDNSKEY)
	if len(rrs) == 0 {
		return fail("no DNSKEY records for " + zone + " (the upstream may strip DNSSEC records)")
	}
	var keys, trusted []*dns.DNSKEY
	var matched []string
	for _, rr := range rrs {
		k := rr.(*dns.DNSKEY)
		if k.Flags&dns.ZONE == 0 || k.Protocol != 3 {
			continue
		}
		keys = append(keys, k)
		tag := k.KeyTag()
		for _, a := range authenticators {
			switch a := a.(type) {
			case *dns.DS:
				if a.KeyTag == tag && a.Algorithm == k.Algorithm {
					if d := k.ToDS(a.DigestType); d != nil && strings.EqualFold(d.Digest, a.Digest) {
						trusted = append(trusted, k)
						matched = append(matched, fmt.Sprintf("%d (matches DS %d/%d/%d)", tag, a.KeyTag, a.Algorithm, a.DigestType))
					}
				}
			case *dns.DNSKEY:
				if a.Algorithm == k.Algorithm && a.Flags == k.Flags && a.PublicKey == k.PublicKey {
					trusted = append(trusted, k)
					matched = append(matched, fmt.Sprintf("%d (is a trust anchor)", tag))
				}
			}
		}
	}
	if len(trusted) == 0 {
		return fail(fmt.Sprintf("no DNSKEY of %s matches its DS or trust anchor", zone))
	}
	res, err := verifyRRset(rrs, sigs, zoneState{Zone: zone, Keys: trusted}, c.now())
	if err != nil {
		return fail(fmt.Sprintf("DNSKEY set of %s: %v", zone, err))
	}
	proof = append(slices.Clone(proof), fmt.Sprintf("%s DNSKEY set signed by key %s", zone, strings.Join(matched, ", ")))
	return zoneState{Zone: zone, Security: Secure, Keys: keys, Proof: proof, TTL: min(ttl, res.ttl, rrsetTTL(rrs))}, nil
}

func bogus(at zoneState, reason string) zoneState {
	return zoneState{Zone: at.Zone, Security: Bogus, TTL: bogusTTL, Reason: reason, Proof: slices.Clone(at.Proof)}
}

// verified describes a successful signature check.
type verified struct {
	ttl       time.Duration
	keyTag    uint16
	algorithm uint8
	wildcard  string // when the RRset was expanded from a wildcard: the name the '*' stands under
}

// verifyRRset accepts rrs when one of sigs is a valid, current signature by
// a key of zs made for this owner (RFC 4035 5.3).
func verifyRRset(rrs []dns.RR, sigs []*dns.RRSIG, zs zoneState, now time.Time) (verified, error) {
	if len(rrs) == 0 {
		return verified{}, errors.New("no records of the class IN")
	}
	if len(sigs) == 0 {
		return verified{}, errors.New("no RRSIG where the zone is signed (stripped?)")
	}
	owner := rrs[0].Header().Name
	labels := dns.CountLabel(owner)
	if strings.HasPrefix(owner, "*.") {
		labels-- // RFC 4034 3.1.3: the wildcard label is not counted
	}
	var why []string
	for _, sig := range sigs {
		signer := canonical(sig.SignerName)
		switch {
		case signer != zs.Zone:
			why = append(why, fmt.Sprintf("signed by %s, not by the zone %s", signer, zs.Zone))
			continue
		case !dns.IsSubDomain(signer, owner):
			why = append(why, fmt.Sprintf("signer %s does not enclose %s", signer, owner))
			continue
		case int(sig.Labels) > labels:
			why = append(why, "RRSIG labels field larger than the owner name")
			continue
		case !algorithmSupported(sig.Algorithm):
			why = append(why, "unsupported algorithm "+dns.AlgorithmToString[sig.Algorithm])
			continue
		}
		inception, expiration := validityWindow(sig, now)
		if now.Add(clockSkew).Before(inception) {
			why = append(why, "RRSIG not valid before "+inception.UTC().Format(time.RFC3339))
			continue
		}
		if now.Add(-clockSkew).After(expiration) {
			why = append(why, "RRSIG expired at "+expiration.UTC().Format(time.RFC3339))
			continue
		}
		for _, k := range zs.Keys {
			if k.Algorithm != sig.Algorithm || k.KeyTag() != sig.KeyTag {
				continue
			}
			if err := sig.Verify(k, rrs); err != nil {
				why = append(why, fmt.Sprintf("signature by key %d does not verify", sig.KeyTag))
				continue
			}
			res := verified{keyTag: sig.KeyTag, algorithm: sig.Algorithm,
				ttl: min(time.Duration(sig.OrigTtl)*time.Second, max(expiration.Sub(now), 0))}
			if int(sig.Labels) < labels {
				res.wildcard = lastLabels(owner, int(sig.Labels))
			}
			return res, nil
		}
		if len(why) == 0 || !strings.HasPrefix(why[len(why)-1], "signature by key") {
			why = append(why, fmt.Sprintf("no key %d in the DNSKEY set of %s", sig.KeyTag, zs.Zone))
		}
	}
	return verified{}, errors.New(strings.Join(why, "; "))
}

// validityWindow resolves the 32-bit RRSIG times with serial arithmetic
// (RFC 4034 3.1.5) around now.
func validityWindow(sig *dns.RRSIG, now time.Time) (time.Time, time.Time) {
	const year68 = 1 << 31
	utc := now.Unix()
	abs := func(t uint32) time.Time {
		v := int64(t)
		d := utc - v + year68
		k := d / (2 * year68)
		if d < 0 && d%(2*year68) != 0 {
			k-- // floor, not truncation
		}
		return time.Unix(v+k*2*year68, 0)
	}
	return abs(sig.Inception), abs(sig.Expiration)
}

// algorithmSupported: RFC 8624 MUST and RECOMMENDED algorithms that
// miekg/dns can verify. RSA/SHA-1 and the rest make a zone Insecure.
func algorithmSupported(alg uint8) bool {
	switch alg {
	case dns.RSASHA256, dns.RSASHA512, dns.ECDSAP256SHA256, dns.ECDSAP384SHA384, dns.ED25519:
		return true
	}
	return false
}

// usableDS keeps the DS records this validator can use: supported
// algorithms, SHA-256 or SHA-384 digests, and SHA-1 only when a key has
// nothing stronger (RFC 4509 3).
func usableDS(ds []dns.RR) []dns.RR {
	strong := map[uint16]bool{}
	for _, rr := range ds {
		d := rr.(*dns.DS)
		if algorithmSupported(d.Algorithm) && (d.DigestType == dns.SHA256 || d.DigestType == dns.SHA384) {
			strong[d.KeyTag] = true
		}
	}
	var out []dns.RR
	for _, rr := range ds {
		d := rr.(*dns.DS)
		if !algorithmSupported(d.Algorithm) {
			continue
		}
		if d.DigestType == dns.SHA256 || d.DigestType == dns.SHA384 || d.DigestType == dns.SHA1 && !strong[d.KeyTag] {
			out = append(out, d)
		}
	}
	return out
}

func describeDS(ds []dns.RR) string {
	var parts []string
	for _, rr := range ds {
		d := rr.(*dns.DS)
		parts = append(parts, fmt.Sprintf("%d/%d/%d", d.KeyTag, d.Algorithm, d.DigestType))
	}
	return strings.Join(parts, ",")
}

// rrsetAt returns the records of rrtype owned by owner in section, with
// owner names in canonical case (so they form one RRset), and the RRSIGs
// that cover them.
func rrsetAt(section []dns.RR, owner string, rrtype uint16) ([]dns.RR, []*dns.RRSIG) {
	var rrs []dns.RR
	var sigs []*dns.RRSIG
	for _, rr := range section {
		h := rr.Header()
		if !strings.EqualFold(h.Name, owner) || h.Class != dns.ClassINET {
			continue
		}
		if sig, ok := rr.(*dns.RRSIG); ok {
			if sig.TypeCovered == rrtype {
				sigs = append(sigs, sig)
			}
			continue
		}
		if h.Rrtype != rrtype {
			continue
		}
		if h.Name != owner {
			rr = dns.Copy(rr)
			rr.Header().Name = owner
		}
		rrs = append(rrs, rr)
	}
	return dns.Dedup(rrs, nil), sigs
}

func rrsetTTL(rrs []dns.RR) time.Duration {
	ttl := time.Duration(-1)
	for _, rr := range rrs {
		ttl = minDuration(ttl, time.Duration(rr.Header().Ttl)*time.Second)
	}
	return max(ttl, 0)
}

// negativeTTL follows RFC 2308 5: the smaller of the SOA's TTL and its
// minimum field; without an SOA the answer is not cached.
func negativeTTL(msg *dns.Msg) time.Duration {
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}

// minDuration treats a negative value as "not set yet".
func minDuration(a, b time.Duration) time.Duration {
	if a < 0 {
		return b
	}
	return min(a, b)
}

func parentName(name string) string {
	if name == "." || name == "" {
		return "."
	}
	i, end := dns.NextLabel(name, 0)
	if end {
		return "."
	}
	return name[i:]
}

// lastLabels returns the rightmost n labels of name, fully qualified.
func lastLabels(name string, n int) string {
	labels := dns.SplitDomainName(name)
	if n >= len(labels) {
		return canonical(name)
	}
	if n == 0 {
		return "."
	}
	return canonical(strings.Join(labels[len(labels)-n:], "."))
}
