// Package resolvertest runs a DNS server in-process on 127.0.0.1:0 that
// answers from zone data a test gives it, so every package can test against
// the same realistic DNS.
package resolvertest

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Server answers authoritatively (and as if recursive) from its records.
type Server struct {
	Addr string // host:port, UDP and TCP

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case owner name
	servfail map[string]bool
	queries  int
}

// Start serves zone (RRs in zone-file syntax, one per line) until the test ends.
func Start(t testing.TB, zone string) *Server {
	t.Helper()
	s := &Server{records: map[string][]dns.RR{}, servfail: map[string]bool{}}
	s.Add(t, zone)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: l, Handler: s}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return s
}

// Add adds records in zone-file syntax.
func (s *Server) Add(t testing.TB, zone string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, line := range strings.Split(zone, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			t.Fatalf("zone line %q: %v", line, err)
		}
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}
}

// ServFail makes questions about name fail with SERVFAIL.
func (s *Server) ServFail(name string) {
	s.mu.Lock()
	s.servfail[dns.Fqdn(strings.ToLower(name))] = true
	s.mu.Unlock()
}

// Queries counts the questions answered so far.
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

func (s *Server) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries++
	resp := new(dns.Msg)
	resp.SetReply(q)
	resp.Authoritative, resp.RecursionAvailable = true, true
	if len(q.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		w.WriteMsg(resp)
		return
	}
	question := q.Question[0]
	name := strings.ToLower(question.Name)
	if s.servfail[name] {
		resp.Rcode = dns.RcodeServerFailure
		w.WriteMsg(resp)
		return
	}
	// Follow CNAMEs as a recursive server would, putting the chain in the answer.
	for hops := 0; hops < 8; hops++ {
		rrs, exists := s.records[name]
		if !exists {
			if len(resp.Answer) == 0 {
				resp.Rcode = dns.RcodeNameError
			}
			break
		}
		var cname string
		for _, rr := range rrs {
			switch {
			case rr.Header().Rrtype == question.Qtype:
				resp.Answer = append(resp.Answer, rr)
			case rr.Header().Rrtype == dns.TypeCNAME:
				resp.Answer = append(resp.Answer, rr)
				cname = strings.ToLower(rr.(*dns.CNAME).Target)
			}
		}
		if cname == "" || question.Qtype == dns.TypeCNAME {
			break
		}
		name = cname
	}
	// Over UDP, an answer larger than the client's buffer is truncated, so
	// that the client must retry over TCP.
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		size := dns.MinMsgSize
		if opt := q.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}
