package interop

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is where every receiving MTA relays what it accepted (each is
// configured with the sink as its only next hop), so the test sees the
// message as the real MTA passed it on: the MTA's own trace headers on
// top of what Postern sent.
type sink struct {
	srv  *smtp.Server
	addr string

	mu   sync.Mutex
	msgs []sunk
}

type sunk struct {
	from  string
	rcpts []string
	data  []byte
	utf8  bool
	body  smtp.BodyType
}

func startSink() (*sink, error) {
	s := &sink{}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s}, nil
	}))
	s.srv.Domain = "sink.interop"
	s.srv.EnableSMTPUTF8 = true
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.AllowInsecureAuth = true
	s.srv.ReadTimeout, s.srv.WriteTimeout = time.Minute, time.Minute
	s.srv.ErrorLog = quietLog{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = l.Addr().String()
	go s.srv.Serve(l)
	return s, nil
}

func (s *sink) close() { s.srv.Close() }

// port is the sink's TCP port, for MTA configs.
func (s *sink) port() string {
	_, port, _ := net.SplitHostPort(s.addr)
	return port
}

// find returns the first message containing token, waiting up to timeout.
func (s *sink) find(token string, timeout time.Duration) (sunk, bool) {
	deadline := time.Now().Add(timeout)
	for {
		if m, ok := s.lookup(token); ok {
			return m, true
		}
		if time.Now().After(deadline) {
			return sunk{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *sink) lookup(token string) (sunk, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if bytes.Contains(m.data, []byte(token)) {
			return m, true
		}
	}
	return sunk{}, false
}

// all returns every message containing token.
func (s *sink) all(token string) []sunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []sunk
	for _, m := range s.msgs {
		if bytes.Contains(m.data, []byte(token)) {
			out = append(out, m)
		}
	}
	return out
}

type sinkSession struct {
	s   *sink
	cur sunk
}

func (ss *sinkSession) Mail(from string, opts *smtp.MailOptions) error {
	ss.cur = sunk{from: from}
	if opts != nil {
		ss.cur.utf8, ss.cur.body = opts.UTF8, opts.Body
	}
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.cur.rcpts = append(ss.cur.rcpts, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("sink read: %w", err)
	}
	ss.cur.data = b
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, ss.cur)
	ss.s.mu.Unlock()
	ss.cur = sunk{}
	return nil
}

func (ss *sinkSession) Reset()        { ss.cur = sunk{} }
func (ss *sinkSession) Logout() error { return nil }

type quietLog struct{}

func (quietLog) Printf(string, ...any) {}
func (quietLog) Println(...any)        {}
