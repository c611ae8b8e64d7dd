package resolver

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/postern/postern/resolver/resolvertest"
)

// FuzzValidate feeds arbitrary wire-format responses to the validator, as
// answers to questions inside a signed zone whose chain of trust is cached:
// no panic, no endless alias walk, only records of the asked type, and
// never Secure for a response without a single RRSIG.
func FuzzValidate(f *testing.F) {
	root := resolvertest.NewZone(f, ".", dns.ECDSAP256SHA256, "")
	zone := resolvertest.NewZone(f, "example.test.", dns.ECDSAP256SHA256, `
@ MX 10 mx
mx A 192.0.2.1
*.wild A 192.0.2.2
alias CNAME mx`)
	nsec3 := resolvertest.NewZone(f, "n3.test.", dns.ED25519, "@ MX 10 mx\nmx A 192.0.2.3", resolvertest.WithNSEC3(0, true))
	tld := resolvertest.NewZone(f, "test.", dns.ECDSAP256SHA256, "")
	root.Delegate(tld)
	tld.Delegate(zone)
	tld.Delegate(nsec3)
	srv := resolvertest.StartZones(f, root, tld, zone, nsec3)
	c, err := New([]string{srv.Addr}, Options{Anchors: root.DS(), Timeout: 200 * time.Millisecond, Attempts: 1})
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	// Real signed answers are the seeds: positive, wildcard, alias, NXDOMAIN under NSEC and NSEC3.
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"example.test.", dns.TypeMX}, {"a.wild.example.test.", dns.TypeA}, {"alias.example.test.", dns.TypeA},
		{"nope.example.test.", dns.TypeA}, {"nope.n3.test.", dns.TypeMX}, {"mx.n3.test.", dns.TypeTXT}} {
		if _, err := c.Lookup(ctx, q.name, q.qtype); err != nil {
			f.Fatal(err)
		}
		msg, err := c.exchange(ctx, q.name, q.qtype)
		if err != nil {
			f.Fatal(err)
		}
		wire, _ := msg.Pack()
		f.Add(wire)
	}
	f.Add([]byte{0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		msg := new(dns.Msg)
		if msg.Unpack(data) != nil || len(msg.Question) != 1 {
			return
		}
		q := msg.Question[0]
		name := canonical(q.Name)
		if !dns.IsSubDomain("example.test.", name) && !dns.IsSubDomain("n3.test.", name) {
			return // keep the walk inside zones whose chain is cached
		}
		ans, err := c.validate(ctx, msg, name, q.Qtype)
		if err != nil {
			return
		}
		for _, rr := range ans.Records {
			if rr.Header().Rrtype != q.Qtype {
				t.Fatalf("asked %s, got %v", dns.TypeToString[q.Qtype], rr)
			}
		}
		signed := false
		for _, section := range [][]dns.RR{msg.Answer, msg.Ns} {
			for _, rr := range section {
				if _, ok := rr.(*dns.RRSIG); ok {
					signed = true
				}
			}
		}
		if !signed && ans.Security == Secure {
			t.Fatalf("Secure without any RRSIG: %+v", ans)
		}
	})
}
