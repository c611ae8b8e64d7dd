package lab

import (
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// DNS answers from its zones, following CNAMEs across them as a recursive
// resolver would, with DNSSEC records when the DO bit is set.
type DNS struct {
	Addr string // host:port, UDP and TCP

	mu       sync.Mutex
	stop     func()
	zones    map[string]*Zone
	servfail map[string]bool
	tamper   func(dns.Question, *dns.Msg)
	queries  int
	asked    []dns.Question
	noTCP    bool
	failure  Failure
	held     map[string]chan struct{} // questions about these names wait for the channel to close
	maxChain int                      // CNAME links followed per answer; 0 means 8
}

// Failure is how the whole server misbehaves.
type Failure int

const (
	Healthy Failure = iota
	Silent          // answers nothing, as a dead upstream
	Garbage         // answers every question with bytes that are not DNS
)

// Fail makes the server misbehave as f until Fail(Healthy).
func (s *DNS) Fail(f Failure) {
	s.mu.Lock()
	s.failure = f
	s.mu.Unlock()
}

// StartDNS serves the given zones on 127.0.0.1 (a free port, UDP and TCP)
// until Close. A question goes to the deepest zone that encloses its name
// (a DS question to the parent).
func StartDNS(zones ...*Zone) (*DNS, error) {
	s := &DNS{zones: map[string]*Zone{}, servfail: map[string]bool{}, held: map[string]chan struct{}{}}
	for _, z := range zones {
		s.zones[z.Origin] = z
	}
	// UDP and TCP must share a port number, which another test may hold
	// on the TCP side: try a few free UDP ports.
	var pc net.PacketConn
	var l net.Listener
	for try := 0; ; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("dns server: %w", err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			return nil, fmt.Errorf("dns server: no port free for both UDP and TCP: %w", err)
		}
	}
	s.Addr = pc.LocalAddr().String()
	// Shutdown of a server that has not started yet blocks for ever: wait
	// for both to start before Close can be called.
	var started sync.WaitGroup
	started.Add(2)
	udp := &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: started.Done}
	tcp := &dns.Server{Listener: l, Handler: s, NotifyStartedFunc: started.Done}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	started.Wait()
	var once sync.Once
	s.stop = func() {
		once.Do(func() {
			// A held handler would keep Shutdown waiting for ever.
			s.mu.Lock()
			for name, ch := range s.held {
				close(ch)
				delete(s.held, name)
			}
			s.mu.Unlock()
			udp.Shutdown()
			tcp.Shutdown()
		})
	}
	return s, nil
}

// Close stops the server; questions held by Hold are let go first.
func (s *DNS) Close() { s.stop() }

// Add adds records in zone-file syntax to the zone that encloses each.
func (s *DNS) Add(records string) error {
	for _, line := range strings.Split(records, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			return fmt.Errorf("zone line %q: %w", line, err)
		}
		s.mu.Lock()
		z := s.zoneOf(dns.CanonicalName(rr.Header().Name), 0)
		s.mu.Unlock()
		if z == nil {
			return fmt.Errorf("no zone encloses %s", rr.Header().Name)
		}
		if err := z.Add(line); err != nil {
			return err
		}
	}
	return nil
}

// ServFail makes questions about name fail with SERVFAIL.
func (s *DNS) ServFail(name string) {
	s.mu.Lock()
	s.servfail[dns.CanonicalName(name)] = true
	s.mu.Unlock()
}

// Tamper lets a test rewrite every response before it is sent, to play
// an attacker or a broken upstream. nil removes it.
func (s *DNS) Tamper(f func(q dns.Question, m *dns.Msg)) {
	s.mu.Lock()
	s.tamper = f
	s.mu.Unlock()
}

// RefuseTCP makes the server drop questions that arrive over TCP.
func (s *DNS) RefuseTCP() {
	s.mu.Lock()
	s.noTCP = true
	s.mu.Unlock()
}

// Hold makes questions about name wait, unanswered, until release is
// called (or the server closes): a slow upstream, without sleeping. The
// question counts in Asked as soon as it arrives.
func (s *DNS) Hold(name string) (release func()) {
	name = dns.CanonicalName(name)
	ch := make(chan struct{})
	s.mu.Lock()
	s.held[name] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.held[name] == ch {
				delete(s.held, name)
				close(ch)
			}
			s.mu.Unlock()
		})
	}
}

// CutChains makes the server follow at most n CNAME (or DNAME) links in
// one answer and return the chain so far, NOERROR with an empty authority
// section, as recursive servers that stop following long chains do.
func (s *DNS) CutChains(n int) {
	s.mu.Lock()
	s.maxChain = n
	s.mu.Unlock()
}

// Queries counts the questions answered so far.
func (s *DNS) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries
}

// Asked returns the questions answered so far, in order.
func (s *DNS) Asked() []dns.Question {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]dns.Question(nil), s.asked...)
}

// zoneOf returns the deepest zone enclosing name; for a DS question about
// a zone's apex, the parent zone.
func (s *DNS) zoneOf(name string, qtype uint16) *Zone {
	for n := name; ; n = parent(n) {
		if z, ok := s.zones[n]; ok && !(qtype == dns.TypeDS && n == name && n != ".") {
			return z
		}
		if n == "." {
			return nil
		}
	}
}

func (s *DNS) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	s.mu.Lock()
	switch s.failure {
	case Silent:
		s.mu.Unlock()
		return
	case Garbage:
		s.mu.Unlock()
		w.Write([]byte("\x13\x37HTTP/1.1 400 Bad Request\r\n\r\n"))
		return
	}
	_, isUDP := w.RemoteAddr().(*net.UDPAddr)
	if !isUDP && s.noTCP {
		s.mu.Unlock()
		w.Close()
		return
	}
	s.queries++
	resp := new(dns.Msg)
	resp.SetReply(q)
	resp.RecursionAvailable = true
	if len(q.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		s.mu.Unlock()
		w.WriteMsg(resp)
		return
	}
	question := q.Question[0]
	s.asked = append(s.asked, question)
	opt := q.IsEdns0()
	do := opt != nil && opt.Do()
	if opt != nil {
		resp.SetEdns0(1232, do)
	}
	name := dns.CanonicalName(question.Name)
	if hold, ok := s.held[name]; ok {
		s.mu.Unlock()
		<-hold
		s.mu.Lock()
	}
	if s.servfail[name] {
		resp.Rcode = dns.RcodeServerFailure
		s.mu.Unlock()
		w.WriteMsg(resp)
		return
	}
	// Follow CNAMEs across zones as a recursive server would, putting the
	// chain in the answer and the last name's proofs in the authority.
	maxChain := s.maxChain
	if maxChain == 0 {
		maxChain = 8
	}
	for hops := 0; ; hops++ {
		z := s.zoneOf(name, question.Qtype)
		if z == nil {
			resp.Rcode = dns.RcodeRefused
			break
		}
		r := z.lookup(name, question.Qtype, do)
		resp.Answer = append(resp.Answer, r.answer...)
		resp.Ns = r.authority
		resp.Rcode = r.rcode
		if r.cname == "" || question.Qtype == dns.TypeCNAME || s.servfail[r.cname] {
			break
		}
		if hops+1 == maxChain {
			resp.Ns, resp.Rcode = nil, dns.RcodeSuccess // the chain so far, and nothing about its end
			break
		}
		name = r.cname
	}
	tamper := s.tamper
	s.mu.Unlock()
	if tamper != nil {
		tamper(question, resp)
	}
	// Over UDP, an answer larger than the client's buffer is truncated, so
	// that the client must retry over TCP.
	if isUDP {
		size := dns.MinMsgSize
		if opt != nil {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}
