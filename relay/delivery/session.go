package delivery

import (
	"bufio"
	"bytes"
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
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

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
	client  *smtp.Client
	netConn net.Conn // for write deadlines, which go-smtp does not set during DATA
	block   time.Duration
	host    string
	addr    netip.AddrPort
	tls     TLSInfo
	capped  *cappedConn // bounds what the server may make us read
	replay  *replayConn // answers go-smtp's EHLO with ehlo, the session's reply
	ehlo    []byte
}

// dialSession opens a session: connect, greeting, EHLO with our name,
// STARTTLS as the policy decision demands, and EHLO again inside TLS. A
// decision that requires TLS is never met by falling back to cleartext: the
// host is given up instead, with a 4.7.x reason.
//
// go-smtp's client introduces itself as "localhost" before STARTTLS, so the
// cleartext part is spoken here, and the client takes over afterwards,
// handed a replayed greeting because none comes after STARTTLS.
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
	fail := func(f *Failure) (*conn, error) { raw.Close(); return nil, f }
	raw.SetDeadline(time.Now().Add(t.Greeting))
	text := textproto.NewConn(raw)
	if _, _, err := readReply(text, 220); err != nil {
		return fail(asFailure(err, host, "greeting"))
	}
	raw.SetDeadline(time.Now().Add(t.Command))
	text.PrintfLine("EHLO %s", hostname)
	_, ehlo, err := readReply(text, 250)
	if err != nil {
		return fail(asFailure(err, host, "EHLO"))
	}
	var info TLSInfo
	next := raw
	offered := offersExtension(ehlo, "STARTTLS")
	if !offered && policy.Required() {
		return fail(&Failure{Temporary: true, Enhanced: "4.7.4", Host: host, ResultType: "starttls-not-supported",
			Text: fmt.Sprintf("TLS is required (%s: %s) but %s does not offer STARTTLS", policy.Describe(), policy.Reason, host)})
	}
	if offered && policy.Level > tlspolicy.None {
		text.PrintfLine("STARTTLS")
		if _, _, err := readReply(text, 220); err != nil {
			// A refused STARTTLS is never a reason to fail the message
			// for good, whatever code the server used.
			return fail(&Failure{Temporary: true, Enhanced: "4.7.4", Host: host, ResultType: "starttls-not-supported",
				CleartextRetry: policy.AllowsCleartextRetry(),
				Text:           fmt.Sprintf("%s refused STARTTLS (%s: %s): %v", host, policy.Describe(), policy.Reason, err)})
		}
		cfg, verification := policy.ClientConfig(host)
		tc := tls.Client(raw, cfg)
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
		text = textproto.NewConn(tc)
		text.PrintfLine("EHLO %s", hostname)
		if _, ehlo, err = readReply(text, 250); err != nil {
			return fail(asFailure(err, host, "EHLO"))
		}
	}
	info.Policy, info.PolicySource, info.PolicyType = policy.Describe(), policy.Source, policy.PolicyType
	if a, err := netip.ParseAddrPort(raw.LocalAddr().String()); err == nil {
		info.SourceIP = a.Addr().Unmap().String()
	}
	next.SetDeadline(time.Time{})
	// The session has had its one EHLO (RFC 5321 4.1.4 lets a server refuse
	// another: OpenSMTPD answers "503 5.5.1 Invalid command: Already
	// identified", and that 5xx bounced mail). go-smtp's client, which
	// says EHLO to learn the extensions (and again after every RSET), is
	// handed the reply instead, and its EHLO is not sent.
	rc := &replayConn{Conn: next, pending: []byte("220 resumed\r\n")}
	reply := ehloReply(ehlo)
	rc.expectEHLO(reply)
	c := smtp.NewClient(rc)
	c.CommandTimeout, c.SubmissionTimeout = t.Command, t.FinalDot
	if err := c.Hello(hostname); err != nil {
		c.Close()
		return nil, asFailure(err, host, "EHLO")
	}
	return &conn{client: c, netConn: next, block: t.Block, host: host, addr: addr, tls: info, capped: capped,
		replay: rc, ehlo: reply}, nil
}

// reset aborts a transaction with RSET, keeping the session's single EHLO
// (go-smtp's client would say EHLO again before the next MAIL).
func (c *conn) reset() error {
	if err := c.client.Reset(); err != nil {
		return err
	}
	c.replay.expectEHLO(c.ehlo)
	return nil
}

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
	c.client.Quit()
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

func readReply(text *textproto.Conn, want int) (int, string, error) {
	code, msg, err := text.ReadResponse(want)
	var perr *textproto.Error
	if errors.As(err, &perr) {
		return code, msg, &smtp.SMTPError{Code: perr.Code, Message: perr.Msg}
	}
	return code, msg, err
}

func offersExtension(ehlo, ext string) bool {
	for _, line := range strings.Split(ehlo, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], ext) {
			return true
		}
	}
	return false
}

// replayConn returns pending bytes before reading the connection, and
// can answer one EHLO from the client itself instead of sending it.
type replayConn struct {
	net.Conn
	pending   []byte
	ehloReply []byte // set: the next EHLO written is answered with this
}

// expectEHLO makes the next EHLO the client writes be answered with reply,
// without reaching the server.
func (r *replayConn) expectEHLO(reply []byte) { r.ehloReply = reply }

func (r *replayConn) Write(p []byte) (int, error) {
	if r.ehloReply != nil && bytes.HasPrefix(p, []byte("EHLO ")) {
		r.pending = append(r.pending, r.ehloReply...)
		r.ehloReply = nil
		return len(p), nil
	}
	return r.Conn.Write(p)
}

// ehloReply renders an EHLO reply (as textproto returned it: the lines
// without codes, joined by newlines) back into its wire form.
func ehloReply(msg string) []byte {
	lines := strings.Split(msg, "\n")
	var b bytes.Buffer
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + l + "\r\n")
	}
	return b.Bytes()
}

func (r *replayConn) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.Conn.Read(p)
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
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		enh := fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		if se.EnhancedCode == smtp.EnhancedCodeNotSet || se.EnhancedCode == smtp.NoEnhancedCode {
			enh = strconv.Itoa(se.Code/100) + ".0.0"
		}
		return &Failure{Temporary: se.Code/100 != 5, Code: se.Code, Enhanced: enh, Text: se.Message, Host: host}
	}
	return &Failure{Temporary: true, Enhanced: "4.4.2", Text: fmt.Sprintf("%s with %s: %v", step, host, err), Host: host}
}

// Transaction is one message for one destination.
type Transaction struct {
	From       string
	Recipients []TxRecipient
	Size       int64
	Options    smtp.MailOptions
	Body       io.Reader
}

// TxRecipient is a recipient with its DSN parameters.
type TxRecipient struct {
	Addr    string
	Options smtp.RcptOptions
}

// send runs one transaction on an open session. It returns a Failure for
// each recipient (nil when accepted and the message delivered), or one
// error for the whole transaction when it failed before any recipient mattered.
func (c *conn) send(tx Transaction) ([]*Failure, error) {
	c.capped.left = maxSessionRead // the budget is per transaction on a reused session
	opts := tx.Options
	opts.Size = tx.Size
	if opts.UTF8 {
		if ok, _ := c.client.Extension("SMTPUTF8"); !ok {
			// RFC 6531 3.4: no downgrade; the message cannot go this way.
			return nil, &Failure{Enhanced: "5.6.7", Text: c.host + " does not support SMTPUTF8, which this message needs", Host: c.host}
		}
	}
	if opts.RequireTLS {
		if ok, _ := c.client.Extension("REQUIRETLS"); !ok || c.tls.Version == "" {
			// RFC 8689 4.2.1: a REQUIRETLS message goes only to a hop that
			// offers REQUIRETLS over TLS; otherwise it fails.
			return nil, &Failure{Enhanced: "5.7.30", Text: c.host + " does not offer REQUIRETLS, which this message requires", Host: c.host}
		}
	}
	if err := c.client.Mail(tx.From, &opts); err != nil {
		return nil, asFailure(err, c.host, "MAIL")
	}
	results := make([]*Failure, len(tx.Recipients))
	accepted := 0
	for i, r := range tx.Recipients {
		ropts := r.Options
		if err := c.client.Rcpt(r.Addr, &ropts); err != nil {
			results[i] = asFailure(err, c.host, "RCPT")
			continue
		}
		accepted++
	}
	if accepted == 0 {
		c.reset()
		return results, nil
	}
	w, err := c.client.Data()
	if err != nil {
		return nil, asFailure(err, c.host, "DATA")
	}
	dw := deadlineWriter{w: w, conn: c.netConn, timeout: c.block}
	if _, err := io.Copy(dw, bufio.NewReaderSize(tx.Body, 32<<10)); err != nil {
		w.Close()
		return nil, asFailure(err, c.host, "message data")
	}
	c.netConn.SetWriteDeadline(time.Time{})
	if err := w.Close(); err != nil {
		f := asFailure(err, c.host, "end of data")
		for i := range results {
			if results[i] == nil {
				results[i] = f
			}
		}
	}
	return results, nil
}

func (c *conn) close() { c.client.Quit(); c.client.Close() }

// deadlineWriter gives each block of message data its own write deadline,
// so a server that stops reading (a tarpit) cannot hold a worker for ever.
type deadlineWriter struct {
	w       io.Writer
	conn    net.Conn
	timeout time.Duration
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	if d.timeout > 0 {
		d.conn.SetWriteDeadline(time.Now().Add(d.timeout))
	}
	return d.w.Write(p)
}
