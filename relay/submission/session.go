package submission

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/dkim"
)

func reply(code int, enhanced string, text string) *smtp.SMTPError {
	var e smtp.EnhancedCode
	fmt.Sscanf(enhanced, "%d.%d.%d", &e[0], &e[1], &e[2])
	return &smtp.SMTPError{Code: code, EnhancedCode: e, Message: text}
}

var (
	errAuthRequired       = reply(530, "5.7.0", "Authentication required")
	errEncryptionRequired = reply(538, "5.7.11", "Encryption required for requested authentication mechanism; use STARTTLS")
	errBadCredentials     = reply(535, "5.7.8", "Authentication credentials invalid")
	errThrottled          = reply(454, "4.7.0", "Too many failed authentication attempts from your address, try again later")
	errAuthBusy           = reply(454, "4.7.0", "Too many authentications in progress, try again later")
	errDirectoryDown      = reply(454, "4.7.0", "Temporary authentication failure: the user directory cannot be reached, try again later")
	errSenderNotAllowed   = reply(553, "5.7.1", "Sender address not allowed for this user")
	errNoStorage          = reply(452, "4.3.1", "Insufficient system storage, try again later")
	errLocal              = reply(451, "4.3.0", "Local error in processing, try again later")
	errReadFailed         = reply(421, "4.4.2", "Error reading message data, closing connection")
	errDuplicateMail      = reply(503, "5.5.1", "Nested MAIL command")
	errShuttingDown       = reply(421, "4.3.2", "Shutting down; try again shortly")
	errMalformedSASL      = reply(501, "5.5.2", "Malformed authentication response")
	errTooManyRcpts       = reply(452, "4.5.3", "Too many recipients")
	errRequireTLSPlain    = reply(530, "5.7.10", "REQUIRETLS needs a TLS session")

	errBareLF         = reply(550, "5.5.2", "Message refused: bare LF in content; lines must end with CRLF (RFC 5321 2.3.8)")
	errBareCR         = reply(550, "5.5.2", "Message refused: bare CR in content; lines must end with CRLF (RFC 5321 2.3.8)")
	errHeaderTooLarge = reply(552, "5.3.4", "Message refused: header section too large")
	errLineTooLong    = reply(500, "5.5.2", "Message refused: line too long")
)

// session is one client's conversation between greeting (or STARTTLS, which
// starts a new one: RFC 3207 4.2) and QUIT. Its methods are called in protocol order.
type session struct {
	srv  *Server
	conn *smtp.Conn
	ip   string
	tls  *tls.ConnectionState
	user *auth.User

	inMail bool
	// busy is set from MAIL until the transaction ends, so that a
	// shutdown lets the transaction finish.
	busy    atomic.Bool
	counted *countedConn // the accepted connection beneath any TLS
	env     queue.Envelope
	rcpts   map[string]bool

	// proxy is the load balancer's address when the connection came
	// through one (PROXY protocol); ip is then the client's.
	proxy string

	// held is what the transaction holds of the credential's limits.
	held quotaHold
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	sess := &session{srv: s, conn: c, ip: remoteHost(c.Conn()), proxy: proxyUnder(c.Conn()), counted: countedUnder(c.Conn())}
	if state, ok := c.TLSConnectionState(); ok {
		sess.tls = &state
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return nil, errShuttingDown
	}
	s.sessions[sess] = struct{}{}
	tlsVersion := ""
	if sess.tls != nil {
		tlsVersion = tls.VersionName(sess.tls.Version)
	}
	s.log.Debug("submission session opened", "client_ip", sess.ip, "tls_version", tlsVersion)
	return sess, nil
}

// hangUp tells an idle client the service is closing (RFC 5321 3.8) and
// closes the connection. Called with srv.mu held.
func (s *session) hangUp() {
	c := s.conn.Conn()
	c.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(c, "421 4.3.2 "+s.srv.cfg.Hostname+" shutting down; try again shortly\r\n")
	c.Close()
}

// AuthMechanisms offers nothing before TLS, so AUTH is not even advertised
// in cleartext (RFC 4954 4).
func (s *session) AuthMechanisms() []string {
	if s.tls == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.tls == nil {
		return nil, errEncryptionRequired
	}
	switch mech {
	case sasl.Plain:
		return s.exchange(sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return errBadCredentials // no acting on behalf of another user
			}
			return s.authenticate(username, password)
		})), nil
	case sasl.Login:
		return s.exchange(newLoginServer(s.authenticate)), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *session) authenticate(username, password string) error {
	// The check may wait for a hash slot (auth.Limits.MaxConcurrentHashes),
	// but no longer than the command may take (RFC 5321 4.5.3.2.7).
	timeout := s.srv.cfg.CommandTimeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	u, delay, err := s.srv.auth.Verify(ctx, s.ip, username, password)
	if err == nil {
		s.user = &u
		if s.counted != nil {
			s.counted.authenticated.Store(true)
		}
		s.srv.log.Info("authenticated", append([]any{"user", u.Name, "client_ip", s.ip}, s.via()...)...)
		return nil
	}
	// The name is the client's word: log it quoted, never the password.
	s.srv.log.Warn("authentication failed", append([]any{"client_ip", s.ip}, append(s.via(), "user", username, "reason", err.Error())...)...)
	if delay > 0 {
		s.srv.sleep(delay)
	}
	if errors.Is(err, auth.ErrBusy) {
		// Temporary and not the client's fault: no delay, no failure counted.
		s.srv.metrics.authFailed("busy")
		return errAuthBusy
	}
	if errors.Is(err, auth.ErrUnavailable) {
		// RFC 4954 6: 454 4.7.0 is the temporary failure; a 535 would
		// tell a client with the right password that it is wrong.
		s.srv.metrics.authFailed("directory_unavailable")
		return errDirectoryDown
	}
	if errors.Is(err, auth.ErrThrottled) {
		s.srv.metrics.authFailed("throttled")
		return errThrottled
	}
	if errors.Is(err, auth.ErrBadCredentials) {
		s.srv.metrics.authFailed("bad_credentials")
		return errBadCredentials
	}
	s.srv.metrics.authFailed("error")
	return errLocal
}

// via names the load balancer a connection came through, for the log.
func (s *session) via() []any {
	if s.proxy == "" {
		return nil
	}
	return []any{"proxy_ip", s.proxy}
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	err := s.mail(from, opts)
	s.srv.metrics.command("MAIL", err)
	s.srv.log.Debug("MAIL", "client_ip", s.ip, "from", from, "requiretls", opts.RequireTLS, "err", err)
	return err
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	err := s.rcpt(to, opts)
	s.srv.metrics.command("RCPT", err)
	s.srv.log.Debug("RCPT", "client_ip", s.ip, "rcpt", to, "err", err)
	return err
}

func (s *session) Data(r io.Reader) error {
	err := s.data(r)
	s.srv.metrics.command("DATA", err)
	if err != nil {
		s.srv.log.Debug("DATA", "client_ip", s.ip, "err", err)
	}
	return err
}

func (s *session) mail(from string, opts *smtp.MailOptions) error {
	if s.user == nil {
		return errAuthRequired
	}
	if s.inMail {
		return errDuplicateMail
	}
	if opts.RequireTLS && s.tls == nil {
		// Unreachable while AUTH needs TLS, but REQUIRETLS must never be
		// accepted over a cleartext hop (RFC 8689 4.1).
		return errRequireTLSPlain
	}
	if from != "" {
		canon, serr := canonicalAddress(from, opts.UTF8, smtp.EnhancedCode{5, 1, 7})
		if serr != nil {
			return serr
		}
		from = canon
	}
	if !s.user.MaySend(from) {
		return errSenderNotAllowed
	}
	if err := s.quotaMail(); err != nil {
		return err
	}
	s.srv.mu.Lock()
	draining := s.srv.draining
	s.busy.Store(!draining)
	s.srv.mu.Unlock()
	if draining {
		s.quotaRelease()
		return errShuttingDown
	}
	s.inMail = true
	s.env = queue.Envelope{
		From:       from,
		Return:     string(opts.Return),
		EnvelopeID: opts.EnvelopeID,
		RequireTLS: opts.RequireTLS || s.user.RequireTLS,
		UTF8:       opts.UTF8,
		BodyType:   string(opts.Body),
		AuthUser:   s.user.Name,
		ClientIP:   s.ip,
	}
	s.rcpts = map[string]bool{}
	return nil
}

func (s *session) rcpt(to string, opts *smtp.RcptOptions) error {
	if s.user == nil {
		return errAuthRequired
	}
	canon, serr := canonicalAddress(to, s.env.UTF8, smtp.EnhancedCode{5, 1, 3})
	if serr != nil {
		return serr
	}
	key := strings.ToLower(canon)
	if s.rcpts[key] {
		return nil // the same recipient twice gets one copy
	}
	if max := int(s.srv.maxRecipients.Load()); max > 0 && len(s.env.Recipients) >= max {
		return errTooManyRcpts
	}
	if err := s.quotaRcpt(); err != nil {
		return err
	}
	r := queue.Recipient{Addr: canon}
	for _, n := range opts.Notify {
		r.Notify = append(r.Notify, string(n))
	}
	if opts.OriginalRecipient != "" {
		r.Original = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
	}
	s.rcpts[key] = true
	s.env.Recipients = append(s.env.Recipients, r)
	return nil
}

// enqueue stores the message, DKIM-signed when there are keys for the
// domain of its From header (else of its envelope sender): the signature
// is computed as the message streams to the queue, and sealed in front of
// it before the commit.
func (s *session) enqueue(id string, body io.Reader, facts headerFacts) (string, error) {
	sign, err := s.srv.dkim.Start(s.signingKeys(facts))
	if err != nil {
		return "", err
	}
	if sign == nil {
		return s.srv.queue.Enqueue(id, s.env, body)
	}
	defer sign.Close()
	return s.srv.queue.EnqueueSealed(id, s.env, io.TeeReader(body, sign), sign.Finish)
}

// signingKeys picks the DKIM keys: those of the From domain, which DMARC
// aligns on, else those of the envelope sender's. Whatever the header
// check's settings, a key signs only for an address the user may send as
// (fromDomain checks every From address; the envelope sender is checked
// again here though MAIL FROM checked it), so no setting and no parsing
// gap can lend a user another domain's signature.
func (s *session) signingKeys(facts headerFacts) []dkim.Key {
	if d := fromDomain(s.user, facts.senders); d != "" {
		if keys := s.srv.dkim.Keys(d); len(keys) > 0 {
			return keys
		}
	}
	if s.env.From == "" || !s.user.MaySend(s.env.From) {
		return nil
	}
	return s.srv.dkim.Keys(asciiDomain(s.env.From))
}

// dataReaders keeps the 64 KiB buffers that read DATA, which would
// otherwise be allocated (and cleared) for every message.
var dataReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

func (s *session) data(r io.Reader) error {
	if s.user == nil || !s.inMail {
		return errAuthRequired
	}
	if err := s.quotaData(); err != nil {
		return err
	}
	start := s.srv.clock()
	id := s.srv.queue.NewID()
	ctx, span := s.srv.metrics.tracer.Start(context.Background(), "submission", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("postern.queue_id", id), attribute.String("postern.user", s.user.Name),
			attribute.Int("postern.recipients", len(s.env.Recipients))))
	defer span.End()
	guard := &crlfGuard{r: clientReader{deadlineReader{r, s.conn.Conn(), s.srv.cfg.DataTimeout}}}
	br := dataReaders.Get().(*bufio.Reader)
	br.Reset(guard)
	defer func() { br.Reset(nil); dataReaders.Put(br) }()
	header, facts, err := readHeader(br)
	if err == nil && !s.srv.cfg.AnyHeaderFrom && !s.user.AnyHeaderFrom {
		if serr := checkHeaderSenders(s.user, facts.senders); serr != nil {
			err = serr
		}
	}
	if err == nil {
		s.env.TLSOptional = facts.tlsOptional && !s.env.RequireTLS // RFC 8689 5: REQUIRETLS wins
		received := s.trace(id, start)
		s.env.MessageID = facts.messageID
		if !facts.hasMessageID {
			s.env.MessageID = "<" + id + "@" + received.hostname + ">"
		}
		body := io.MultiReader(bytes.NewReader(received.headers(facts)), bytes.NewReader(header), &suspensionCheck{r: br, s: s})
		_, commit := s.srv.metrics.tracer.Start(ctx, "queue.commit")
		_, err = s.enqueue(id, body, facts)
		commit.End()
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return s.refuse(err)
	}
	s.quotaCount()
	s.srv.queued()
	s.srv.metrics.queued(s.srv.clock().Sub(start))
	tlsVersion := ""
	if s.tls != nil {
		tlsVersion = tls.VersionName(s.tls.Version)
	}
	s.srv.log.Info("message queued", "queue_id", id, "user", s.user.Name, "client_ip", s.ip,
		"from", s.env.From, "rcpts", len(s.env.Recipients), "size", guard.n, "tls_version", tlsVersion,
		"requiretls", s.env.RequireTLS, "took", s.srv.clock().Sub(start))
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK queued as " + id}
}

func (s *session) trace(id string, now time.Time) traceInfo {
	t := traceInfo{helo: cleanHelo(s.conn.Hostname()), clientIP: s.ip, hostname: s.srv.cfg.Hostname,
		user: s.user.Name, id: id, now: now}
	if s.tls != nil {
		t.tlsVersion = tls.VersionName(s.tls.Version)
		t.tlsCipher = tls.CipherSuiteName(s.tls.CipherSuite)
	}
	return t
}

// refuse turns a failed DATA or BDAT into the reply the client must hear.
func (s *session) refuse(err error) error {
	var serr *smtp.SMTPError
	var cerr clientError
	switch {
	case errors.As(err, &cerr):
		// The connection itself failed (timeout, reset, over-long line):
		// its byte stream can no longer be trusted to be framed, so it is
		// closed rather than read on as commands. An immediate read deadline
		// makes go-smtp give up after sending this reply.
		s.srv.log.Warn("message data read failed", "client_ip", s.ip, "err", cerr.err)
		s.conn.Conn().SetReadDeadline(time.Now())
		if errors.Is(cerr.err, smtp.ErrTooLongLine) {
			return errLineTooLong
		}
		return errReadFailed
	case errors.As(err, &serr):
		s.srv.log.Warn("message refused", "client_ip", s.ip, "user", s.user.Name, "code", serr.Code, "reason", serr.Message)
		return serr
	case errors.Is(err, smtp.ErrDataReset):
		return err
	case errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT):
		s.srv.log.Error("queue storage full; refusing submissions", "err", err)
		return errNoStorage
	default:
		s.srv.log.Error("queueing failed", "client_ip", s.ip, "err", err)
		return errLocal
	}
}

func (s *session) Reset() {
	s.quotaRelease()
	s.inMail = false
	s.env = queue.Envelope{}
	s.rcpts = nil
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	s.busy.Store(false)
	if s.srv.draining {
		// The transaction's reply is out; go-smtp holds its own lock here,
		// so the connection is closed beneath it.
		s.conn.Conn().Close()
	}
}

func (s *session) Logout() error {
	s.quotaRelease()
	s.srv.mu.Lock()
	delete(s.srv.sessions, s)
	s.srv.mu.Unlock()
	user := ""
	if s.user != nil {
		user = s.user.Name
	}
	s.srv.log.Debug("submission session closed", "client_ip", s.ip, "user", user)
	return nil
}

// clientError marks a failure of the client connection, as opposed to a
// refusal of the content or a local storage failure.
type clientError struct{ err error }

func (e clientError) Error() string { return "client: " + e.err.Error() }
func (e clientError) Unwrap() error { return e.err }

type clientReader struct{ r io.Reader }

func (c clientReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	var serr *smtp.SMTPError
	if err != nil && err != io.EOF && !errors.As(err, &serr) && !errors.Is(err, smtp.ErrDataReset) {
		return n, clientError{err}
	}
	return n, err
}

// suspensionCheck asks once more, when the body has been read and before
// the queue commits it, whether the credential was suspended meanwhile: a
// flood's messages spend their time in DATA, and a suspension must stop
// the message being sent too. Its refusal ends the body with an error, so
// the queue stores nothing and the client hears 450 4.7.1.
type suspensionCheck struct {
	r io.Reader
	s *session
}

func (c *suspensionCheck) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		if qerr := c.s.quotaData(); qerr != nil {
			return n, qerr
		}
	}
	return n, err
}
