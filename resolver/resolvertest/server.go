// Package resolvertest runs a DNS server in-process on 127.0.0.1:0 that
// answers like a recursive resolver from zones a test gives it, signed
// under the test's own root key or unsigned, so that every package can test
// against realistic DNS, DNSSEC included, without the network.
//
// It is a thin wrapper over internal/lab, which `postern demo` shares: a
// failure there fails the test, and what it starts stops when the test ends.
package resolvertest

import (
	"testing"

	"github.com/miekg/dns"

	"github.com/postern/postern/internal/lab"
)

// Server answers from its zones, following CNAMEs across them as a
// recursive resolver would, with DNSSEC records when the DO bit is set.
type Server struct {
	Addr string // host:port, UDP and TCP

	dns *lab.DNS
}

// Failure is how the whole server misbehaves.
type Failure = lab.Failure

const (
	Healthy = lab.Healthy
	Silent  = lab.Silent  // answers nothing, as a dead upstream
	Garbage = lab.Garbage // answers every question with bytes that are not DNS
)

// Fail makes the server misbehave as f until Fail(Healthy).
func (s *Server) Fail(f Failure) { s.dns.Fail(f) }

// Start serves zone (RRs in zone-file syntax, one per line) as one unsigned
// root zone until the test ends.
func Start(t testing.TB, zone string) *Server {
	t.Helper()
	return StartZones(t, NewZone(t, ".", 0, zone))
}

// StartSigned serves zone as one root zone signed with a key of the
// test's own, and returns the trust anchor that validates it.
func StartSigned(t testing.TB, zone string) (*Server, []dns.RR) {
	t.Helper()
	root := NewZone(t, ".", dns.ECDSAP256SHA256, zone)
	return StartZones(t, root), root.DS()
}

// StartZones serves the given zones until the test ends. A question goes
// to the deepest zone that encloses its name (a DS question to the parent).
func StartZones(t testing.TB, zones ...*Zone) *Server {
	t.Helper()
	var inner []*lab.Zone
	for _, z := range zones {
		inner = append(inner, z.zone)
	}
	d, err := lab.StartDNS(inner...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return &Server{Addr: d.Addr, dns: d}
}

// Add adds records in zone-file syntax to the zone that encloses each.
func (s *Server) Add(t testing.TB, records string) {
	t.Helper()
	if err := s.dns.Add(records); err != nil {
		t.Fatal(err)
	}
}

// ServFail makes questions about name fail with SERVFAIL.
func (s *Server) ServFail(name string) { s.dns.ServFail(name) }

// Tamper lets a test rewrite every response before it is sent, to play
// an attacker or a broken upstream. nil removes it.
func (s *Server) Tamper(f func(q dns.Question, m *dns.Msg)) { s.dns.Tamper(f) }

// RefuseTCP makes the server drop questions that arrive over TCP.
func (s *Server) RefuseTCP() { s.dns.RefuseTCP() }

// Hold makes questions about name wait, unanswered, until release is
// called (or the test ends): a slow upstream, without sleeping. The
// question counts in Asked as soon as it arrives.
func (s *Server) Hold(name string) (release func()) { return s.dns.Hold(name) }

// CutChains makes the server follow at most n CNAME (or DNAME) links in
// one answer and return the chain so far, NOERROR with an empty authority
// section, as recursive servers that stop following long chains do.
func (s *Server) CutChains(n int) { s.dns.CutChains(n) }

// Queries counts the questions answered so far.
func (s *Server) Queries() int { return s.dns.Queries() }

// Asked returns the questions answered so far, in order.
func (s *Server) Asked() []dns.Question { return s.dns.Asked() }

// ServeDNS answers one question, as the server does.
func (s *Server) ServeDNS(w dns.ResponseWriter, q *dns.Msg) { s.dns.ServeDNS(w, q) }
