package delivery

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/postern/postern/relay/smtpclient"
	"github.com/postern/postern/tlspolicy"
)

// Timeouts of the outbound session (RFC 5321 4.5.3.2).
type Timeouts struct {
	Connect  time.Duration // not in the RFC; 30s
	Greeting time.Duration // 4.5.3.2.1: 5 minutes
	Command  time.Duration // MAIL, RCPT, DATA initiation: 5 minutes
	Block    time.Duration // 4.5.3.2.5: 3 minutes for each block of data sent
	FinalDot time.Duration // 4.5.3.2.6: 10 minutes
}

// DefaultTimeouts are the RFC's.
var DefaultTimeouts = Timeouts{Connect: 30 * time.Second, Greeting: 5 * time.Minute, Command: 5 * time.Minute,
	Block: 3 * time.Minute, FinalDot: 10 * time.Minute}

// TLSInfo is what an outbound connection negotiated.
type TLSInfo struct {
	Version, Cipher string // empty without TLS
	Verified        bool   // the certificate was authenticated (Auth says how)
	Auth            string // "DANE-EE", "DANE-TA", "PKIX" or ""
	Policy          string // the decision enforced, e.g. "dane", "mta-sts verify", "default may"
	PolicySource    string // where the decision came from: dane, mta-sts, local, default, route, memory
	// VerifyFailure is why the certificate did not authenticate, where the
	// policy (MTA-STS testing) let delivery go on anyway.
	VerifyFailure string
	// ResultType names a TLS failure as RFC 8460 does, for TLS reports.
	ResultType string
	// PassivePKIX: the certificate would have passed PKIX checks, although
	// the policy did not ask (for the downgrade memory).
	PassivePKIX bool
	// PolicyType is the RFC 8460 policy type: tlsa, sts or no-policy-found.
	PolicyType string
	// Fallback, when set, is why this session is in cleartext: STARTTLS
	// failed at level may and the delivery was retried without it.
	Fallback string
	// Chain is what the server presented; PeerSHA256 is the hex SHA-256 of
	// its first certificate, computed once per connection for the evidence.
	Chain      []*x509.Certificate `json:"-"`
	PeerSHA256 string
	// SourceIP is the local address the connection left from.
	SourceIP string
}

// conn is one open SMTP session to a next hop, ready for transactions.
type conn struct {
	client  *smtpclient.Client
	netConn net.Conn // closed beneath the client when the attempt is cut off
	host    string
	addr    netip.AddrPort
	tls     TLSInfo
	capped  *cappedConn // bounds what the server may make us read
}

// dialSession opens a session: connect, greeting, EHLO with our name,
// STARTTLS as the policy decision demands, and EHLO again inside TLS. A
// decision that requires TLS is never met by falling back to cleartext: the
// host is given up instead, with a 4.7.x reason.
//
// The session says EHLO once, and once more after STARTTLS (RFC 3207 4.2),
// and never again, not even after RSET: RFC 5321 4.1.4 lets a server refuse
// a second one (OpenSMTPD answers "503 5.5.1 Invalid command: Already
// identified"), and that 5xx once bounced mail.
func dialSession(ctx context.Context, d *net.Dialer, hostname, host string, addr netip.AddrPort, t Timeouts, policy tlspolicy.Decision) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, t.Connect)
	raw, err := d.DialContext(dctx, "tcp", addr.String())
	cancel()
	if err != nil {
		return nil, &Failure{Temporary: true, Enhanced: "4.4.1", Text: fmt.Sprintf("connect to %s [%s]: %v", host, addr, err)}
	}
	// Everything a server says in a session is a few kilobytes; a peer
	// that streams an endless reply line is cut off here, before it can
	// fill memory for the whole command timeout.
	capped := &cappedConn{Conn: raw, left: maxSessionRead}
	raw = capped
	// The client knows no context: an end of ctx (a shutdown's drain
	// deadline, a lost lease) closes the connection beneath the opening,
	// which would otherwise run to the greeting's, EHLO's and STARTTLS's
	// own timeouts, holding the attempt, its worker and its domain's slot.
	cutOff := context.AfterFunc(ctx, func() { raw.Close() })
	fail := func(f *Failure) (*conn, error) { cutOff(); raw.Close(); return nil, f }
	client := smtpclient.New(raw, smtpclient.Timeouts{Command: t.Command, Block: t.Block, FinalDot: t.FinalDot})
	if err := client.Greet(t.Greeting); err != nil {
		return fail(asFailure(err, host, "greeting"))
	}
	if err := client.Hello(hostname); err != nil {
		return fail(asFailure(err, host, "EHLO"))
	}
	var info TLSInfo
	next := raw
	offered, _ := client.Extension("STARTTLS")
	if !offered && policy.Required() {
		return fail(&Failure{Temporary: true, Enhanced: "4.7.4", Host: host, ResultType: "starttls-not-supported",
			Text: fmt.Sprintf("TLS is required (%s: %s) but %s does not offer STARTTLS", policy.Describe(), policy.Reason, host)})
	}
	if offered && policy.Level > tlspolicy.None {
		if err := client.StartTLS(); err != nil {
			// A refused STARTTLS is never a reason to fail the message
			// for good, whatever code the server used.
			return fail(&Failure{Temporary: true, Enhanced: "4.7.4", Host: host, ResultType: "starttls-not-supported",
				CleartextRetry: policy.AllowsCleartextRetry(),
				Text:           fmt.Sprintf("%s refused STARTTLS (%s: %s): %v", host, policy.Describe(), policy.Reason, err)})
		}
		cfg, verification := policy.ClientConfig(host)
		tc := tls.Client(raw, cfg)
		raw.SetDeadline(time.Now().Add(t.Command))
		if err := tc.HandshakeContext(ctx); err != nil {
			// Where nothing requires TLS, the caller may try once more
			// in cleartext on a new connection (RFC 7435 3); otherwise
			// the host is given up for now.
			return fail(&Failure{Temporary: true, Enhanced: "4.7.5", Host: host, ResultType: tlspolicy.ResultType(err, policy),
				CleartextRetry: policy.AllowsCleartextRetry() && ctx.Err() == nil,
				Text:           fmt.Sprintf("TLS with %s failed (%s: %s): %v", host, policy.Describe(), policy.Reason, err)})
		}
		st := tc.ConnectionState()
		info = TLSInfo{Version: tls.VersionName(st.Version), Cipher: tls.CipherSuiteName(st.CipherSuite),
			Verified: verification.Method != "", Auth: verification.Method, VerifyFailure: verification.Failure,
			PassivePKIX: verification.PassivePKIX, Chain: st.PeerCertificates}
		if len(st.PeerCertificates) > 0 {
			sum := sha256.Sum256(st.PeerCertificates[0].Raw)
			info.PeerSHA256 = hex.EncodeToString(sum[:])
		}
		next = tc
		// RFC 3207 4.2: everything learned before TLS is discarded; EHLO
		// again.
		client.Upgrade(tc)
		if err := client.Hello(hostname); err != nil {
			return fail(asFailure(err, host, "EHLO"))
		}
	}
	info.Policy, info.PolicySource, info.PolicyType = policy.Describe(), policy.Source, policy.PolicyType
	if a, err := netip.ParseAddrPort(raw.LocalAddr().String()); err == nil {
		info.SourceIP = a.Addr().Unmap().String()
	}
	if !cutOff() {
		return fail(&Failure{Temporary: true, Enhanced: "4.4.2", Host: host,
			Text: fmt.Sprintf("session with %s cut off while opening: %v", host, context.Cause(ctx))})
	}
	next.SetDeadline(time.Time{})
	return &conn{client: client, netConn: next, host: host, addr: addr, tls: info, capped: capped}, nil
}

// reset aborts a transaction with RSET, keeping the session's single EHLO.
// Where the server pipelines, the RSET goes out with the next
// transaction's commands.
func (c *conn) reset() error { return c.client.Reset() }

// Probe opens a session to host at addr under decision as a delivery
// would (EHLO, STARTTLS, verification), then quits: for people checking a
// destination (postern policy check --connect).
func Probe(ctx context.Context, hostname, host string, addr netip.AddrPort, decision tlspolicy.Decision, timeout time.Duration) (TLSInfo, error) {
	t := Timeouts{Connect: timeout, Greeting: timeout, Command: timeout, Block: timeout, FinalDot: timeout}
	c, err := dialSession(ctx, &net.Dialer{}, hostname, host, addr, t, decision)
	if err != nil {
		return TLSInfo{}, err
	}
	info := c.tls
	c.close()
	return info, nil
}

// maxSessionRead bounds what an outbound session may read while opening
// (greeting, EHLO, the TLS handshake) and then in each transaction.
const maxSessionRead = 1 << 20

var errReplyTooLong = errors.New("the server's replies are too long (over 1 MiB)")

type cappedConn struct {
	net.Conn
	left int64
}

func (c *cappedConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errReplyTooLong
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= int64(n)
	return n, err
}

// Failure is why a message, a recipient or a host could not be served.
type Failure struct {
	Temporary bool
	Code      int    // the remote reply code, 0 when no server said anything
	Enhanced  string // "4.4.1"
	Text      string
	Host      string // the server that said it, if one did
	// ResultType names a TLS policy failure as RFC 8460 4.3.2 does.
	ResultType string
	// CleartextRetry: STARTTLS failed where nothing required TLS, so one
	// more try in cleartext, on a new connection, is allowed (RFC 7435).
	CleartextRetry bool
}

func (f *Failure) Error() string {
	if f.Code != 0 {
		return fmt.Sprintf("%d %s %s", f.Code, f.Enhanced, f.Text)
	}
	return f.Enhanced + " " + f.Text
}

// asFailure classifies an error from a session step: a reply code decides
// temporary or permanent; anything else (timeouts, resets) is temporary.
func asFailure(err error, host, step string) *Failure {
	var f *Failure
	if errors.As(err, &f) {
		return f
	}
	var se *smtpclient.Error
	if errors.As(err, &se) {
		enh := se.Enhanced
		if enh == "" {
			enh = strconv.Itoa(se.Code/100) + ".0.0"
		}
		return &Failure{Temporary: se.Code/100 != 5, Code: se.Code, Enhanced: enh, Text: se.Text, Host: host}
	}
	return &Failure{Temporary: true, Enhanced: "4.4.2", Text: fmt.Sprintf("%s with %s: %v", step, host, err), Host: host}
}

// Transaction is one message for one destination.
type Transaction struct {
	Mail       smtpclient.Mail
	Recipients []smtpclient.Rcpt
	// Body opens the message, once for each SMTP transaction it takes.
	Body func() (io.ReadCloser, error)
}

// maxRcptsPerTxn: RFC 5321 4.5.3.1.8 obliges a server to take 100
// recipients in a transaction, and no more; more go in further
// transactions on the same session.
const maxRcptsPerTxn = 100

// send delivers the message to its recipients on an open session, in as
// many transactions as the recipients need. It returns a Failure for each
// recipient in the order given (nil when accepted and the message
// delivered), or one error for the whole message when it failed before any
// recipient mattered.
func (c *conn) send(tx Transaction) ([]*Failure, error) {
	if tx.Mail.UTF8 {
		if ok, _ := c.client.Extension("SMTPUTF8"); !ok {
			// RFC 6531 3.4: no downgrade; the message cannot go this way.
			return nil, &Failure{Enhanced: "5.6.7", Text: c.host + " does not support SMTPUTF8, which this message needs", Host: c.host}
		}
	}
	if tx.Mail.RequireTLS {
		if ok, _ := c.client.Extension("REQUIRETLS"); !ok || c.tls.Version == "" {
			// RFC 8689 4.2.1: a REQUIRETLS message goes only to a hop that
			// offers REQUIRETLS over TLS; otherwise it fails.
			return nil, &Failure{Enhanced: "5.7.30", Text: c.host + " does not offer REQUIRETLS, which this message requires", Host: c.host}
		}
	}
	if limit := c.client.MaxSize(); limit > 0 && tx.Mail.Size > limit {
		// RFC 1870 6: the server said it will not take a message this
		// large; as Postfix does, the message fails rather than waiting
		// for a limit that is the server's policy.
		return nil, &Failure{Enhanced: "5.3.4", Host: c.host,
			Text: fmt.Sprintf("the message (%d bytes) exceeds the size limit of %s (%d bytes)", tx.Mail.Size, c.host, limit)}
	}
	results := make([]*Failure, len(tx.Recipients))
	pending := make([]int, len(tx.Recipients))
	for i := range pending {
		pending[i] = i
	}
	for first := true; len(pending) > 0; first = false {
		batch := pending[:min(len(pending), maxRcptsPerTxn)]
		later := pending[len(batch):]
		res, err := c.transaction(tx, batch)
		if err != nil {
			f := asFailure(err, c.host, "transaction")
			if first {
				return nil, f
			}
			// Earlier transactions' outcomes stand; this one's
			// recipients and the rest share its failure.
			for _, i := range pending {
				results[i] = f
			}
			break
		}
		retry, stop := c.settle(res, batch, results)
		if stop != nil {
			for _, i := range later {
				results[i] = stop
			}
			break
		}
		pending = append(retry, later...)
	}
	return results, nil
}

// transaction runs one SMTP transaction for the recipients batch.
func (c *conn) transaction(tx Transaction, batch []int) (smtpclient.Result, error) {
	c.capped.left = maxSessionRead // the budget is per transaction on a reused session
	body, err := tx.Body()
	if err != nil {
		return smtpclient.Result{}, &Failure{Temporary: true, Enhanced: "4.3.0", Text: "reading queued message: " + err.Error()}
	}
	defer body.Close()
	rcpts := make([]smtpclient.Rcpt, len(batch))
	for k, i := range batch {
		rcpts[k] = tx.Recipients[i]
	}
	read := &bodyReader{r: body}
	res, err := c.client.Send(tx.Mail, rcpts, read)
	if err != nil && read.err != nil {
		// Our own failure (the spool file could not be read), not the
		// server's: reported as a local error (4.3.0, no reply code), so
		// that it is not taken for a connection the destination dropped.
		return res, &Failure{Temporary: true, Enhanced: "4.3.0", Text: "reading queued message: " + read.err.Error()}
	}
	return res, err
}

// bodyReader remembers the error, other than the end, that reading the
// queued message gave.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// settle records the outcome of a transaction for its recipients. A
// recipient refused as one too many (RFC 5321 4.5.3.1.10) goes again in
// the next transaction, if this one took someone; if it took no one, the
// server takes no more for now, and stop is the deferral for those left.
func (c *conn) settle(res smtpclient.Result, batch []int, results []*Failure) (retry []int, stop *Failure) {
	accepted := res.Accepted()
	var data *Failure
	if res.Data != nil {
		data = asFailure(res.Data, c.host, "end of data")
	}
	for k, i := range batch {
		if res.Rcpts[k] == nil {
			results[i] = data
			continue
		}
		f := asFailure(res.Rcpts[k], c.host, "RCPT")
		if tooManyRecipients(f) {
			if accepted > 0 {
				retry = append(retry, i)
				continue
			}
			stop = f
		}
		results[i] = f
	}
	return retry, stop
}

// tooManyRecipients: 452 is what RFC 5321 4.5.3.1.10 says a server answers
// to a recipient beyond what it takes in one transaction, and 4.5.3 is
// RFC 3463's "too many recipients"; 452 with another enhanced code (4.2.2,
// mailbox full) is about the recipient, not the count.
func tooManyRecipients(f *Failure) bool {
	return f.Temporary && (f.Enhanced == "4.5.3" || (f.Code == 452 && f.Enhanced == "4.0.0"))
}

func (c *conn) close() { c.client.Quit() }
