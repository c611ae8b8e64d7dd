package resolver

import (
	"testing"

	"github.com/miekg/dns"
)

// FuzzAnswer feeds arbitrary wire-format messages to the answer handling:
// no panic, no endless CNAME walk, and only records of the asked type.
func FuzzAnswer(f *testing.F) {
	seed := new(dns.Msg)
	seed.SetQuestion("example.test.", dns.TypeMX)
	seed.Answer = append(seed.Answer,
		&dns.CNAME{Hdr: dns.RR_Header{Name: "example.test.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: "b.test."},
		&dns.MX{Hdr: dns.RR_Header{Name: "b.test.", Rrtype: dns.TypeMX, Class: dns.ClassINET, Ttl: 30}, Mx: "mx.b.test.", Preference: 5})
	wire, _ := seed.Pack()
	f.Add(wire)
	f.Add([]byte{0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		msg := new(dns.Msg)
		if msg.Unpack(data) != nil {
			return
		}
		for _, qtype := range []uint16{dns.TypeMX, dns.TypeA, dns.TypeAAAA} {
			rrs, _ := answerFor(msg, "example.test", qtype)
			for _, rr := range rrs {
				if rr.Header().Rrtype != qtype {
					t.Fatalf("asked %d, got %v", qtype, rr)
				}
			}
		}
	})
}
