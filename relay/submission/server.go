// Package submission is Postern's message submission agent: authenticated
// SMTP on STARTTLS (RFC 6409) and implicit-TLS (RFC 8314) listeners, which
// puts each accepted message durably in the queue before answering 250.
package submission

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/dkim"
	"github.com/postern/postern/relay/quota"
)

// Config is the submission service's settings, already validated.
type Config struct {
	Hostname            string
	HandshakeTimeout    time.Duration // for implicit TLS (465); default 30s
	MaxMessageBytes     int64
	MaxRecipients       int
	MaxLineLength       int
	CommandTimeout      time.Duration // RFC 5321 4.5.3.2.7: 5 minutes
	DataTimeout         time.Duration // RFC 5321 4.5.3.2.6: 3 minutes per block
	MaxConnections      int
	MaxConnectionsPerIP int
	MinTLSVersion       uint16
	// ProxyFrom are the networks of the load balancers whose connections
	// open with a PROXY protocol header (v1 or v2) naming the client; nil
	// trusts none. ProxyHeaderTimeout bounds the wait for that header
	// (DefaultProxyHeaderTimeout when zero).
	ProxyFrom          []netip.Prefix
	ProxyHeaderTimeout time.Duration
	// AnyHeaderFrom turns off, for every user, the check that the header
	// From and Sender addresses match the user's sender patterns (the
	// zero value checks). DKIM keys still sign only for allowed addresses.
	AnyHeaderFrom bool
	// SendingLimits are the default hourly limits of each credential
	// (0: unlimited); they apply only with a Deps.Quota.
	SendingLimits quota.Limits
}

// Queue is where accepted messages go.
type Queue interface {
	NewID() string
	Enqueue(id string, env queue.Envelope, body io.Reader) (string, error)
	EnqueueSealed(id string, env queue.Envelope, body io.Reader, seal func() ([]byte, error)) (string, error)
}

// Authenticator checks credentials, with its own throttling.
type Authenticator interface {
	Verify(ctx context.Context, ip, name, password string) (auth.User, time.Duration, error)
}

// Deps are the services the submission agent uses.
type Deps struct {
	Queue          Queue
	Auth           Authenticator
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	Log            *slog.Logger        // default: logs nothing
	Clock          func() time.Time    // default time.Now
	Sleep          func(time.Duration) // default time.Sleep; delays failed AUTH replies
	Queued         func()              // called after each accepted message, e.g. to wake delivery
	DKIM           *dkim.Signer        // signs messages of the domains it has keys for; nil signs none
	Quota          Quota               // counts and limits what each credential sends; nil limits nothing
}

// Server runs the submission listeners.
type Server struct {
	cfg     Config
	queue   Queue
	auth    Authenticator
	log     *slog.Logger
	clock   func() time.Time
	sleep   func(time.Duration)
	queued  func()
	dkim    *dkim.Signer
	quota   Quota
	tls     *tls.Config
	smtp    *smtp.Server
	metrics *instruments

	// The limits a configuration reload may change (SetLimits).
	maxRecipients, maxConnections, maxConnectionsPerIP atomic.Int64
	messagesPerHour, recipientsPerHour                 atomic.Int64
	proxyFrom                                          atomic.Pointer[[]netip.Prefix]

	mu        sync.Mutex
	listeners []*limitListener
	sessions  map[*session]struct{}
	draining  bool
}

// New builds a server; call ServeSTARTTLS and ServeTLS with listeners.
func New(cfg Config, d Deps) *Server {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Sleep == nil {
		d.Sleep = time.Sleep
	}
	if d.Queued == nil {
		d.Queued = func() {}
	}
	if cfg.MinTLSVersion == 0 {
		cfg.MinTLSVersion = tls.VersionTLS12
	}
	s := &Server{cfg: cfg, queue: d.Queue, auth: d.Auth, log: d.Log, clock: d.Clock, sleep: d.Sleep, queued: d.Queued, dkim: d.DKIM, quota: d.Quota,
		sessions: map[*session]struct{}{}, metrics: newInstruments()}
	s.maxRecipients.Store(int64(cfg.MaxRecipients))
	s.maxConnections.Store(int64(cfg.MaxConnections))
	s.maxConnectionsPerIP.Store(int64(cfg.MaxConnectionsPerIP))
	s.SetSendingLimits(cfg.SendingLimits)
	s.SetProxyNetworks(cfg.ProxyFrom)
	s.tls = &tls.Config{MinVersion: cfg.MinTLSVersion, GetCertificate: d.GetCertificate}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = cfg.Hostname
	srv.TLSConfig = s.tls
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxLineLength = cfg.MaxLineLength
	srv.ReadTimeout = cfg.CommandTimeout
	srv.WriteTimeout = cfg.CommandTimeout
	// go-smtp answers AUTH without TLS with its own 523; letting AUTH through
	// to the session gives the RFC 4954 reply, 538 5.7.11, and the session
	// still offers no mechanism in cleartext.
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.EnableREQUIRETLS = true
	srv.EnableDSN = true
	srv.ErrorLog = slogPrinter{d.Log}
	s.smtp = srv
	return s
}

// ServeSTARTTLS serves cleartext-then-STARTTLS submission on l (port 587).
func (s *Server) ServeSTARTTLS(l net.Listener) error {
	return s.smtp.Serve(s.limit(l))
}

// limit layers a listener: the PROXY protocol first (it settles the
// client's address), then the connection limits that count by address.
func (s *Server) limit(l net.Listener) *limitListener {
	l = newProxyListener(l, s)
	ll := newLimitListener(l, s.cfg.Hostname, &s.maxConnections, &s.maxConnectionsPerIP)
	s.mu.Lock()
	s.listeners = append(s.listeners, ll)
	s.mu.Unlock()
	return ll
}

// SetLimits changes the recipient and connection limits (a configuration
// reload); sessions and connections from now on obey them.
func (s *Server) SetLimits(maxRecipients, maxConnections, maxConnectionsPerIP int) {
	s.maxRecipients.Store(int64(maxRecipients))
	s.maxConnections.Store(int64(maxConnections))
	s.maxConnectionsPerIP.Store(int64(maxConnectionsPerIP))
}

// SetProxyNetworks replaces the networks trusted to send a PROXY protocol
// header (a configuration reload); connections from now on obey them.
func (s *Server) SetProxyNetworks(trusted []netip.Prefix) {
	trusted = append([]netip.Prefix(nil), trusted...)
	s.proxyFrom.Store(&trusted)
}

// ServeTLS serves implicit-TLS submission on l (port 465).
func (s *Server) ServeTLS(l net.Listener) error {
	timeout := s.cfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return s.smtp.Serve(&implicitTLSListener{Listener: s.limit(l), config: s.tls, timeout: timeout})
}

// implicitTLSListener hands out TLS connections whose handshake must end
// within timeout. go-smtp would give it the whole command timeout, so a
// client that connects to 465 and says nothing (slowloris) would hold a
// connection slot for minutes.
type implicitTLSListener struct {
	net.Listener
	config  *tls.Config
	timeout time.Duration
}

func (l *implicitTLSListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	hc := &handshakeConn{Conn: c, until: time.Now().Add(l.timeout)}
	hc.Conn.SetDeadline(hc.until)
	cfg := l.config.Clone()
	// Called at the end of every server handshake, client certificate or not.
	cfg.VerifyConnection = func(tls.ConnectionState) error { hc.done.Store(true); return nil }
	return tls.Server(hc, cfg), nil
}

// handshakeConn keeps every deadline at or before until while the TLS
// handshake runs; afterwards deadlines pass through unchanged.
type handshakeConn struct {
	net.Conn
	until time.Time
	done  atomic.Bool
}

func (c *handshakeConn) clamp(t time.Time) time.Time {
	if c.done.Load() || (!t.IsZero() && t.Before(c.until)) {
		return t
	}
	return c.until
}

func (c *handshakeConn) SetDeadline(t time.Time) error     { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *handshakeConn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(c.clamp(t)) }
func (c *handshakeConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t))
}

// Shutdown stops accepting, says 421 to sessions between transactions and
// closes them, and lets each transaction in progress finish (the session
// closes after its reply) until ctx ends; then it closes what is left. A
// transaction cut off before its 250 was never acknowledged, so the client
// will send it again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	owned := map[*countedConn]bool{}
	for sess := range s.sessions {
		owned[sess.counted] = true
		if !sess.busy.Load() {
			sess.hangUp()
		}
	}
	// Connections with no session yet (before EHLO, or in a handshake)
	// have nothing in flight.
	for _, l := range s.listeners {
		l.closeIf(func(c *countedConn) bool { return !owned[c] })
	}
	s.mu.Unlock()
	err := s.smtp.Shutdown(ctx)
	if err != nil {
		// go-smtp's Close is a no-op once Shutdown has begun, so the
		// connections are cut here.
		s.mu.Lock()
		for _, l := range s.listeners {
			l.closeAll()
		}
		s.mu.Unlock()
	}
	return err
}

type slogPrinter struct{ log *slog.Logger }

// goSMTPConnError is the format go-smtp's Server.Serve gives its ErrorLog
// when a connection ends in an error, with the remote address and the
// error as arguments: a client that reset the connection, or spoke plain
// text to the implicit-TLS port, or failed its TLS handshake. That is the
// client's trouble, not the server's: a warning, with client_ip a field
// of its own (the arguments are typed, so no text is parsed).
const goSMTPConnError = "error handling %v: %s"

func (p slogPrinter) Printf(format string, v ...any) {
	if format == goSMTPConnError && len(v) == 2 {
		if addr, ok := v[0].(net.Addr); ok {
			ip := addr.String()
			if ap, err := netip.ParseAddrPort(ip); err == nil {
				ip = ap.Addr().Unmap().String()
			}
			p.log.Warn("submission connection failed", "client_ip", ip, "err", v[1])
			return
		}
	}
	p.log.Error("smtp server", "detail", fmt.Sprintf(format, v...))
}
func (p slogPrinter) Println(v ...any) { p.log.Error("smtp server", "detail", fmt.Sprint(v...)) }
