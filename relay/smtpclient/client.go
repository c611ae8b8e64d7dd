// Package smtpclient is the client side of SMTP that Postern's outbound
// sessions speak: greeting, EHLO, STARTTLS, AUTH PLAIN, and transactions
// that use PIPELINING (RFC 2920) and CHUNKING (RFC 3030) when the server
// offers them, so that MAIL, every RCPT and the message go out in one
// flight and a transaction costs one or two round trips instead of one per
// command.
//
// It is its own package, not part of relay/delivery, because it is a wire
// protocol with its own parser (fuzzed) and its own tests against raw
// servers, and delivery only needs a handful of calls from it: Greet,
// Hello, StartTLS/Upgrade, Auth, Send, Reset, Quit. It knows nothing of
// queues, policies or retries; what a reply means for a message is
// delivery's decision.
//
// A Client is not safe for concurrent use: one session, one goroutine.
package smtpclient

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Timeouts are RFC 5321 4.5.3.2's: for each command's reply, for each
// block of message data written, and for the reply to the end of data.
type Timeouts struct {
	Command  time.Duration
	Block    time.Duration
	FinalDot time.Duration
}

// writeBuffer is the size of the one buffer commands and message data go
// through: a full buffer fills a TLS record (16 KiB, RFC 8446 5.1), so a
// pipelined group or a block of the message is one record and one write.
const writeBuffer = 16 << 10

// Client is one SMTP session.
type Client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	out  deadlineWriter
	t    Timeouts
	ext  map[string]string // EHLO keywords (upper case) and their parameters
	// rsetDue: the server is to hear RSET before the next MAIL. With
	// PIPELINING it goes in the next transaction's flight (RFC 2920 3.1
	// lets RSET be pipelined), saving a round trip per reused session.
	rsetDue bool
	// broken: a read or write failed, or a reply did not parse, so the
	// session is out of step; nothing more is sent on it.
	broken error
	// used: the session has had a transaction, so before the next one it
	// is checked for replies nobody asked for (see inStep).
	used  bool
	chunk []byte // the message on its way out, kept for the session
	rbuf  []byte // what is read from the message, likewise
}

// New starts a client on conn; nothing is read or sent yet.
func New(conn net.Conn, t Timeouts) *Client {
	c := &Client{t: t}
	c.attach(conn)
	return c
}

func (c *Client) attach(conn net.Conn) {
	c.conn = conn
	c.out = deadlineWriter{conn: conn, timeout: c.t.Command}
	c.r = bufio.NewReaderSize(conn, 4096)
	c.w = bufio.NewWriterSize(&c.out, writeBuffer)
}

// deadlineWriter gives every write to the connection its own deadline, so
// a server that stops reading (a tarpit) cannot hold a worker for ever.
type deadlineWriter struct {
	conn    net.Conn
	timeout time.Duration
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if d.timeout > 0 {
		d.conn.SetWriteDeadline(time.Now().Add(d.timeout))
	}
	return d.conn.Write(p)
}

// Greet reads the server's 220 greeting, waiting up to timeout (RFC 5321
// 4.5.3.2.1).
func (c *Client) Greet(timeout time.Duration) error {
	_, err := c.expect("greeting", 220, timeout)
	return err
}

// Hello says EHLO and learns the extensions the server offers.
func (c *Client) Hello(name string) error {
	c.command("EHLO %s", name)
	if err := c.flush(c.t.Command); err != nil {
		return err
	}
	rep, err := c.expect("EHLO", 250, c.t.Command)
	if err != nil {
		return err
	}
	c.ext = parseEHLO(rep.Text)
	return nil
}

// parseEHLO reads the extensions of an EHLO reply's text (RFC 5321 4.1.1.1:
// the first line is the server's name, each later one a keyword and its
// parameters).
func parseEHLO(text string) map[string]string {
	ext := map[string]string{}
	lines := strings.Split(text, "\n")
	for _, l := range lines[1:] {
		kw, params, _ := strings.Cut(strings.TrimSpace(l), " ")
		kw = strings.ToUpper(kw)
		if k, v, ok := strings.Cut(kw, "="); ok && k == "AUTH" {
			// "AUTH=PLAIN LOGIN", from before RFC 4954, still sent by old
			// servers next to (or instead of) the standard form.
			kw, params = "AUTH", strings.TrimSpace(v+" "+params)
		}
		if old, ok := ext["AUTH"]; ok && kw == "AUTH" {
			params = old + " " + params
		}
		if kw != "" {
			ext[kw] = strings.TrimSpace(params)
		}
	}
	return ext
}

// Extension says whether the server offers ext, and with which parameters.
func (c *Client) Extension(ext string) (bool, string) {
	params, ok := c.ext[strings.ToUpper(ext)]
	return ok, params
}

// MaxSize is the server's SIZE limit (RFC 1870), 0 when it states none.
func (c *Client) MaxSize() int64 {
	n, _ := strconv.ParseInt(c.ext["SIZE"], 10, 64)
	return max(n, 0)
}

// AuthMechanisms are the SASL mechanisms the server offers (RFC 4954).
func (c *Client) AuthMechanisms() []string {
	return strings.Fields(strings.ToUpper(c.ext["AUTH"]))
}

// StartTLS asks to start TLS. On success the caller runs the handshake on
// the underlying connection and hands the TLS connection to Upgrade.
func (c *Client) StartTLS() error {
	c.command("STARTTLS")
	if err := c.flush(c.t.Command); err != nil {
		return err
	}
	_, err := c.expect("STARTTLS", 220, c.t.Command)
	return err
}

// Upgrade continues the session over conn (the TLS connection after
// STARTTLS). What the server offered is forgotten (RFC 3207 4.2): EHLO
// again. Whatever was read after the reply to STARTTLS is dropped with the
// old reader: bytes that arrived before TLS are never taken for replies
// said inside it (the response-injection flaw of CVE-2011-0411's kind).
func (c *Client) Upgrade(conn net.Conn) {
	c.attach(conn)
	c.ext = nil
}

// Auth logs in with SASL PLAIN (RFC 4616), the credentials in the initial
// response (RFC 4954 4). The credentials never appear in an error.
func (c *Client) Auth(user, password string) error {
	if ok, _ := c.Extension("AUTH"); !ok {
		return errors.New("the server does not offer AUTH")
	}
	plain := false
	for _, m := range c.AuthMechanisms() {
		plain = plain || m == "PLAIN"
	}
	if !plain {
		return fmt.Errorf("the server offers AUTH %s, not PLAIN", strings.Join(c.AuthMechanisms(), " "))
	}
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
	c.command("AUTH PLAIN %s", resp)
	for asked := false; ; asked = true {
		if err := c.flush(c.t.Command); err != nil {
			return err
		}
		rep, err := c.read(c.t.Command)
		if err != nil {
			return err
		}
		switch {
		case rep.Code == 235:
			return nil
		case rep.Code == 334 && !asked:
			// A server that ignores the initial response asks for it
			// with an empty challenge: give it again, once.
			c.command("%s", resp)
			continue
		case rep.Code == 334:
			// Asked a second time: cancel the exchange (RFC 4954 4).
			c.command("*")
			if err := c.flush(c.t.Command); err != nil {
				return err
			}
			if rep, err = c.read(c.t.Command); err != nil {
				return err
			}
			rep.Text = "the server asked for the PLAIN response again: " + rep.Text
		}
		rep.Text = redact(rep.Text, resp, password)
		return &Error{Command: "AUTH", Reply: rep}
	}
}

// redact takes secrets out of a server's reply text: a server that echoes
// the command it refuses ("500 unrecognized command: AUTH PLAIN AHJl...")
// or the password would otherwise put them in the error, which is logged
// and becomes the diagnostic of a delay notice to the message's sender.
// A password of fewer than 4 bytes is not looked for: it would blank out
// ordinary words, and is no secret worth the name.
func redact(text string, secrets ...string) string {
	for _, s := range secrets {
		if len(s) >= 4 {
			text = strings.ReplaceAll(text, s, "[redacted]")
		}
	}
	return text
}

// Reset ends any transaction (RSET). Where the server pipelines, the RSET
// is sent with the next transaction's commands instead of now; an error
// then surfaces from that Send.
func (c *Client) Reset() error {
	if c.broken != nil {
		return c.broken
	}
	if ok, _ := c.Extension("PIPELINING"); ok {
		c.rsetDue = true
		return nil
	}
	return c.rset()
}

func (c *Client) rset() error {
	c.rsetDue = false
	c.command("RSET")
	if err := c.flush(c.t.Command); err != nil {
		return err
	}
	_, err := c.expect("RSET", 250, c.t.Command)
	return err
}

// Quit says QUIT, waits for the reply, and closes the connection. On a
// session already out of step it only closes.
func (c *Client) Quit() error {
	if c.broken == nil {
		c.command("QUIT")
		if c.flush(c.t.Command) == nil {
			c.read(c.t.Command)
		}
	}
	return c.conn.Close()
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }

// Broken is why the session is out of step, or nil while it is usable.
func (c *Client) Broken() error { return c.broken }

// command buffers one command line; flush sends what is buffered.
func (c *Client) command(format string, args ...any) {
	fmt.Fprintf(c.w, format, args...)
	c.w.WriteString("\r\n")
}

func (c *Client) flush(timeout time.Duration) error {
	if c.broken != nil {
		return c.broken
	}
	c.out.timeout = timeout
	if err := c.w.Flush(); err != nil {
		c.broken = err
		return err
	}
	return nil
}

// read reads one reply, waiting up to timeout for it to begin.
func (c *Client) read(timeout time.Duration) (Reply, error) {
	if c.broken != nil {
		return Reply{}, c.broken
	}
	if timeout > 0 {
		c.conn.SetReadDeadline(time.Now().Add(timeout))
	}
	rep, err := readReply(c.r)
	if err != nil {
		c.broken = err
	}
	return rep, err
}

// ErrOutOfStep is wrapped by the error of a session whose server said
// something no command asked for: a reply too many, from a broken server
// or from one that ran commands smuggled in a message. Every reply read
// after it would be taken for the one before, so the session is given up.
var ErrOutOfStep = fmt.Errorf("%w: the server said more than it was asked", ErrProtocol)

// strayWait is how long inStep waits for bytes the server may have sent
// while the session was idle. It is a cost on every reused session, so it
// is short: the data it looks for has normally arrived long before.
const strayWait = time.Millisecond

// inStep makes sure the server has said nothing since the last reply it
// owed: a reply read ahead (buffered) or arriving while the session was
// idle would be taken for the reply to the next command (with PIPELINING,
// the pipelined RSET's), and every reply after it for the one before, so
// that the next message's recipients would get each other's outcomes. An
// idle session the server closed is given up too. Only a session that
// has been idle (wait) is waited for; otherwise only what was read ahead
// is looked at.
func (c *Client) inStep(wait bool) error {
	if c.broken != nil {
		return c.broken
	}
	if c.r.Buffered() > 0 {
		c.broken = ErrOutOfStep
		return c.broken
	}
	if !wait {
		return nil
	}
	c.conn.SetReadDeadline(time.Now().Add(strayWait))
	_, err := c.r.Peek(1)
	c.conn.SetReadDeadline(time.Time{})
	var ne net.Error
	switch {
	case err == nil:
		c.broken = ErrOutOfStep
	case errors.As(err, &ne) && ne.Timeout():
		return nil // silence, as it should be
	default:
		c.broken = fmt.Errorf("the idle session ended: %w", err)
	}
	return c.broken
}

// expect reads a reply and turns any code but want into an *Error.
func (c *Client) expect(cmd string, want int, timeout time.Duration) (Reply, error) {
	rep, err := c.read(timeout)
	if err != nil {
		return rep, err
	}
	if rep.Code != want {
		return rep, &Error{Command: cmd, Reply: rep}
	}
	return rep, nil
}
