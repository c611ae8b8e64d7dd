package delivery

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/relay/submission"
)

// received is one message as a fake MX got it.
type received struct {
	From    string
	Mail    smtp.MailOptions
	Rcpts   []string
	RcptOpt []smtp.RcptOptions
	Data    []byte
	TLS     bool
	User    string
}

// fakeMX is a real SMTP server on 127.0.0.1:0 that records what it gets.
type fakeMX struct {
	port     int
	mu       sync.Mutex
	msgs     []received
	sessions int
	// rcptReply decides each RCPT's answer; nil accepts.
	rcptReply func(rcpt string) error
	password  string // when set, AUTH PLAIN with user "relay" is required
	leaf      *x509.Certificate
}

func startMX(t *testing.T, configure func(*smtp.Server, *fakeMX)) *fakeMX {
	t.Helper()
	mx := &fakeMX{}
	cert, err := submission.SelfSigned("mx.test")
	if err != nil {
		t.Fatal(err)
	}
	mx.leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		_, isTLS := c.TLSConnectionState()
		if isTLS { // one per connection: go-smtp starts a new session after STARTTLS
			mx.mu.Lock()
			mx.sessions++
			mx.mu.Unlock()
		}
		return &mxSession{mx: mx, cur: received{TLS: isTLS}}, nil
	}))
	srv.Domain = "mx.test"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.EnableDSN, srv.EnableSMTPUTF8, srv.EnableREQUIRETLS = true, true, true
	srv.ErrorLog = nopLogger{}
	if configure != nil {
		configure(srv, mx)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	mx.port = l.Addr().(*net.TCPAddr).Port
	return mx
}

func (mx *fakeMX) received() []received {
	mx.mu.Lock()
	defer mx.mu.Unlock()
	return append([]received(nil), mx.msgs...)
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

type mxSession struct {
	mx   *fakeMX
	cur  received
	user string
}

func (s *mxSession) AuthMechanisms() []string {
	if s.mx.password == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *mxSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != "relay" || pass != s.mx.password {
			return errors.New("bad credentials")
		}
		s.user = user
		return nil
	}), nil
}

func (s *mxSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.mx.password != "" && s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "auth first"}
	}
	s.cur.From, s.cur.Mail, s.cur.User = from, *opts, s.user
	return nil
}

func (s *mxSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.mx.rcptReply != nil {
		if err := s.mx.rcptReply(to); err != nil {
			return err
		}
	}
	s.cur.Rcpts = append(s.cur.Rcpts, to)
	s.cur.RcptOpt = append(s.cur.RcptOpt, *opts)
	return nil
}

func (s *mxSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.Data = data
	s.mx.mu.Lock()
	s.mx.msgs = append(s.mx.msgs, s.cur)
	s.mx.mu.Unlock()
	s.cur = received{TLS: s.cur.TLS}
	return nil
}

func (s *mxSession) Reset()        { s.cur = received{TLS: s.cur.TLS} }
func (s *mxSession) Logout() error { return nil }

func (mx *fakeMX) connections() int {
	mx.mu.Lock()
	defer mx.mu.Unlock()
	return mx.sessions
}
