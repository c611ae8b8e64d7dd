package resolvertest

import (
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postern/postern/internal/lab"
)

// Zone is one zone the server answers for, signed by its own key (one
// combined key-signing and zone-signing key) or unsigned. Every change
// re-signs the zone, in the test's goroutine, so that failures show there.
type Zone struct {
	Origin string

	t    testing.TB
	zone *lab.Zone
}

// ZoneOption changes how a zone is signed.
type ZoneOption = lab.ZoneOption

// WithNSEC3 denies existence with NSEC3 (SHA-1, no salt, the given
// iterations), with opt-out for unsigned delegations when optOut is set.
func WithNSEC3(iterations uint16, optOut bool) ZoneOption { return lab.WithNSEC3(iterations, optOut) }

// WithValidity sets the signature validity window.
func WithValidity(inception, expiration time.Time) ZoneOption {
	return lab.WithValidity(inception, expiration)
}

// NewZone returns a zone with records in zone-file syntax (owner names
// relative to origin are allowed). algorithm is a DNSSEC algorithm number
// (dns.ECDSAP256SHA256, dns.RSASHA256, dns.ED25519, ...) or 0 for unsigned.
// An SOA is added when the records have none.
func NewZone(t testing.TB, origin string, algorithm uint8, records string, opts ...ZoneOption) *Zone {
	t.Helper()
	z, err := lab.NewZone(origin, algorithm, records, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return &Zone{Origin: z.Origin, t: t, zone: z}
}

func (z *Zone) check(err error) {
	z.t.Helper()
	if err != nil {
		z.t.Fatal(err)
	}
}

// Add adds records in zone-file syntax.
func (z *Zone) Add(records string) {
	z.t.Helper()
	z.check(z.zone.Add(records))
}

// Remove deletes the RRset of rrtype at owner.
func (z *Zone) Remove(owner string, rrtype uint16) {
	z.t.Helper()
	z.check(z.zone.Remove(owner, rrtype))
}

// Delegate makes child a delegated zone of z: NS records, and a DS for the
// child's key when the child is signed.
func (z *Zone) Delegate(child *Zone) {
	z.t.Helper()
	z.check(z.zone.Delegate(child.zone))
}

// DS returns the DS record (SHA-256) of the zone's key, none when unsigned.
func (z *Zone) DS() []dns.RR { return z.zone.DS() }

// Anchor returns the zone's DS in zone-file syntax, for a trust anchor file.
func (z *Zone) Anchor() string { return z.zone.Anchor() }

// Rekey replaces the zone's key, so that the parent's DS no longer matches.
func (z *Zone) Rekey() {
	z.t.Helper()
	z.check(z.zone.Rekey())
}

// Key returns the zone's DNSKEY (nil when unsigned).
func (z *Zone) Key() *dns.DNSKEY { return z.zone.Key() }

// Sign returns an RRSIG over rrs made with the zone's key, for tests that
// forge or misplace signatures.
func (z *Zone) Sign(rrs []dns.RR) *dns.RRSIG {
	z.t.Helper()
	sig, err := z.zone.Sign(rrs)
	z.check(err)
	return sig
}
