package resolver

import (
	"crypto"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// RRSIG.Verify in miekg/dns accepts a signer that is only a text suffix of
// the owner; verifyRRset must not.
func TestSignerMustEncloseOwner(t *testing.T) {
	key := &dns.DNSKEY{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 3600},
		Flags: 257, Protocol: 3, Algorithm: dns.ECDSAP256SHA256}
	priv, err := key.Generate(256)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sign := func(owner string) ([]dns.RR, []*dns.RRSIG) {
		rr, _ := dns.NewRR(owner + " 300 IN A 192.0.2.1")
		sig := &dns.RRSIG{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeRRSIG, Class: dns.ClassINET, Ttl: 300},
			TypeCovered: dns.TypeA, Algorithm: key.Algorithm, Labels: uint8(dns.CountLabel(owner)), OrigTtl: 300,
			Inception: uint32(now.Add(-time.Hour).Unix()), Expiration: uint32(now.Add(time.Hour).Unix()),
			KeyTag: key.KeyTag(), SignerName: "example.test."}
		if err := sig.Sign(priv.(crypto.Signer), []dns.RR{rr}); err != nil {
			t.Fatal(err)
		}
		return []dns.RR{rr}, []*dns.RRSIG{sig}
	}
	zs := zoneState{Zone: "example.test.", Security: Secure, Keys: []*dns.DNSKEY{key}}
	rrs, sigs := sign("www.example.test.")
	if _, err := verifyRRset(rrs, sigs, zs, now); err != nil {
		t.Fatalf("a name inside the zone: %v", err)
	}
	rrs, sigs = sign("badexample.test.")
	if sigs[0].Verify(key, rrs) != nil {
		t.Skip("miekg/dns now refuses this itself")
	}
	if _, err := verifyRRset(rrs, sigs, zs, now); err == nil || !strings.Contains(err.Error(), "does not enclose") {
		t.Fatalf("badexample.test. under the example.test. key: %v", err)
	}
}

func TestValidityWindowSerialArithmetic(t *testing.T) {
	now := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	sig := &dns.RRSIG{Inception: uint32(now.Add(-time.Hour).Unix()), Expiration: uint32(now.Add(time.Hour).Unix())}
	in, ex := validityWindow(sig, now)
	if !in.Equal(now.Add(-time.Hour)) || !ex.Equal(now.Add(time.Hour)) {
		t.Fatalf("%v %v", in, ex)
	}
	// Past 2106 the 32-bit fields wrap; the window is still read around now.
	later := time.Date(2107, 1, 1, 0, 0, 0, 0, time.UTC)
	sig = &dns.RRSIG{Inception: uint32(later.Add(-time.Hour).Unix()), Expiration: uint32(later.Add(time.Hour).Unix())}
	in, ex = validityWindow(sig, later)
	if !in.Equal(later.Add(-time.Hour)) || !ex.Equal(later.Add(time.Hour)) {
		t.Fatalf("after the wrap: %v %v", in, ex)
	}
}

func TestCanonicalOrder(t *testing.T) {
	// RFC 4034 6.1's example order.
	ordered := []string{"example.", "a.example.", "yljkjljk.a.example.", "Z.a.example.", "zABC.a.EXAMPLE.",
		"z.example.", `\001.z.example.`, "*.z.example.", `\200.z.example.`}
	for i := 0; i+1 < len(ordered); i++ {
		if compareCanonical(ordered[i], ordered[i+1]) >= 0 {
			t.Errorf("%s should sort before %s", ordered[i], ordered[i+1])
		}
	}
}
