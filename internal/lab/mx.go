package lab

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one message as the MX received it.
type Message struct {
	From    string
	Mail    smtp.MailOptions
	Rcpts   []string
	RcptOpt []smtp.RcptOptions
	Data    []byte
	TLS     bool   // received inside STARTTLS
	User    string // authenticated as, when AUTH was used
	Helo    string // the name the client gave in EHLO
	Peer    string // the client's address (where the connection came from)
}

// MX is a recording SMTP server offering STARTTLS with a self-signed
// certificate for "mx.test", localhost and 127.0.0.1.
type MX struct {
	Port   int
	Server *smtp.Server      // adjust before traffic (EnableSMTPUTF8, TLSConfig = nil, …)
	Leaf   *x509.Certificate // the certificate it presents, to trust in tests
	// RcptReply decides each RCPT's answer; nil accepts all.
	RcptReply func(rcpt string) error
	// Password, when set, requires AUTH PLAIN as user "relay".
	Password string
	// Arrived receives a value for every message stored.
	Arrived chan struct{}
	// IPv6, set by configure, also listens on [::1] at the same port.
	IPv6 bool

	close     func()
	closeOnce sync.Once

	mu           sync.Mutex
	msgs         []Message
	connections  int
	authAttempts int
}

// StartMX runs an MX on 127.0.0.1 (a free port) until Close; configure
// runs before it serves.
func StartMX(configure func(*MX)) (*MX, error) {
	cert, err := SelfSigned("mx.test")
	if err != nil {
		return nil, fmt.Errorf("mx certificate: %w", err)
	}
	mx := &MX{Arrived: make(chan struct{}, 1<<16)}
	mx.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		_, isTLS := c.TLSConnectionState()
		if isTLS || mx.Server.TLSConfig == nil { // go-smtp starts a new session after STARTTLS
			mx.mu.Lock()
			mx.connections++
			mx.mu.Unlock()
		}
		return &session{mx: mx, conn: c, cur: Message{TLS: isTLS}}, nil
	}))
	srv.Domain = "mx.test"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.EnableDSN, srv.EnableSMTPUTF8, srv.EnableREQUIRETLS = true, true, true
	srv.ErrorLog = nopLogger{}
	mx.Server = srv
	if configure != nil {
		configure(mx)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("mx listener: %w", err)
	}
	mx.Port = l.Addr().(*net.TCPAddr).Port
	var l6 net.Listener
	if mx.IPv6 {
		if l6, err = net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(mx.Port))); err != nil {
			l.Close()
			return nil, fmt.Errorf("listening on [::1] at the IPv4 listener's port: %w", err)
		}
	}
	served := make(chan struct{})
	go func() { srv.Serve(l); close(served) }()
	served6 := make(chan struct{})
	if l6 != nil {
		go func() { srv.Serve(l6); close(served6) }()
	} else {
		close(served6)
	}
	mx.close = func() { srv.Close(); <-served; <-served6 }
	return mx, nil
}

// Close stops the MX and its sessions.
func (mx *MX) Close() {
	mx.closeOnce.Do(mx.close)
}

// Received returns the messages stored so far.
func (mx *MX) Received() []Message {
	mx.mu.Lock()
	defer mx.mu.Unlock()
	return append([]Message(nil), mx.msgs...)
}

// AuthAttempts counts the AUTH exchanges that reached a password check.
func (mx *MX) AuthAttempts() int {
	mx.mu.Lock()
	defer mx.mu.Unlock()
	return mx.authAttempts
}

// Connections counts the connections that reached a session.
func (mx *MX) Connections() int {
	mx.mu.Lock()
	defer mx.mu.Unlock()
	return mx.connections
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}
func (nopLogger) Println(...any)        {}

type session struct {
	mx   *MX
	conn *smtp.Conn
	cur  Message
	user string
}

func (s *session) AuthMechanisms() []string {
	if s.mx.Password == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		s.mx.mu.Lock()
		s.mx.authAttempts++
		s.mx.mu.Unlock()
		if user != "relay" || pass != s.mx.Password {
			return errors.New("bad credentials")
		}
		s.user = user
		return nil
	}), nil
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.mx.Password != "" && s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "auth first"}
	}
	s.cur.From, s.cur.Mail, s.cur.User = from, *opts, s.user
	s.cur.Helo = s.conn.Hostname()
	if host, _, err := net.SplitHostPort(s.conn.Conn().RemoteAddr().String()); err == nil {
		s.cur.Peer = host
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.mx.RcptReply != nil {
		if err := s.mx.RcptReply(to); err != nil {
			return err
		}
	}
	s.cur.Rcpts = append(s.cur.Rcpts, to)
	s.cur.RcptOpt = append(s.cur.RcptOpt, *opts)
	return nil
}

func (s *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.Data = data
	s.mx.mu.Lock()
	s.mx.msgs = append(s.mx.msgs, s.cur)
	s.mx.mu.Unlock()
	s.mx.Arrived <- struct{}{}
	s.cur = Message{TLS: s.cur.TLS}
	return nil
}

func (s *session) Reset()        { s.cur = Message{TLS: s.cur.TLS} }
func (s *session) Logout() error { return nil }
