package smtpclient

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Mail is a transaction's sender and its MAIL parameters.
type Mail struct {
	From       string
	Size       int64  // SIZE (RFC 1870), sent where offered; 0 states none
	UTF8       bool   // SMTPUTF8 (RFC 6531 3.4); an error where not offered
	RequireTLS bool   // REQUIRETLS (RFC 8689 4.2.1); an error where not offered
	Return     string // RET=FULL or HDRS (RFC 3461 4.3), where DSN is offered
	EnvelopeID string // ENVID (RFC 3461 4.4), xtext-encoded, where DSN is offered
}

// Rcpt is a recipient with its DSN parameters (RFC 3461 4.1, 4.2), sent
// where the server offers DSN.
type Rcpt struct {
	Addr   string
	Notify []string // NEVER, or some of SUCCESS, FAILURE, DELAY
	// OrigType and Orig are ORCPT's address type ("rfc822", "utf-8") and
	// the original address, unencoded.
	OrigType, Orig string
}

// Result is what a transaction did for its recipients.
type Result struct {
	// Rcpts holds the reply to each RCPT, in the order given: nil where
	// the recipient was accepted, an *Error where it was refused.
	Rcpts []error
	// Data is why the message was not taken, for the accepted recipients
	// (the reply to the end of data or to a BDAT); nil when it was, or
	// when no recipient was accepted.
	Data error
}

// Accepted counts the recipients the server took.
func (r Result) Accepted() int {
	n := 0
	for _, err := range r.Rcpts {
		if err == nil {
			n++
		}
	}
	return n
}

// chunkSize is how much of the message one BDAT carries: a small message
// goes whole in the first flight, a large one in pieces of this size.
const chunkSize = 64 << 10

// Send runs one transaction: MAIL, an RCPT for each recipient, and the
// message (BDAT where the server offers CHUNKING, else DATA). Where the
// server offers PIPELINING, MAIL, the RCPTs and DATA (or the first BDAT
// with its chunk, where the chunk has no line a server could take for a
// transaction's command) go in one flight and the replies are read after
// it, each RCPT's own (RFC 2920 3.1); otherwise each command waits for its
// reply.
//
// body is read to its end and sent in SMTP's canonical form: a bare LF
// or a bare CR becomes CRLF, and a message that does not end with a line break gets one,
// whether it goes by DATA or BDAT, so both deliver the same bytes.
//
// The error is for the transaction as a whole: MAIL or DATA refused, or
// the connection failed (then Broken says so); with an error, the Result
// means nothing. After any Send the
// session is ready for the next MAIL (an aborted transaction is reset
// first, with the next flight where possible).
func (c *Client) Send(m Mail, rcpts []Rcpt, body io.Reader) (Result, error) {
	// A session that has had a transaction has been idle since, perhaps
	// in the pool: the server may have spoken meanwhile.
	if err := c.inStep(c.used); err != nil {
		return Result{}, err
	}
	mail, err := c.mailCommand(m)
	if err != nil {
		return Result{}, err
	}
	lines := make([]string, len(rcpts))
	for i, r := range rcpts {
		if lines[i], err = c.rcptCommand(r, m.UTF8); err != nil {
			return Result{}, err
		}
	}
	t := &txn{c: c, mail: mail, rcpts: lines, body: body, res: Result{Rcpts: make([]error, len(rcpts))}, k: canon{bol: true}}
	t.chunking, _ = c.Extension("CHUNKING")
	pipelining, _ := c.Extension("PIPELINING")
	rset := c.rsetDue
	if rset && !pipelining {
		if err := c.rset(); err != nil {
			return Result{}, refusedRSET(c, err)
		}
	}
	// Whatever happens now, the next transaction starts with RSET, unless
	// this one ends with the message taken (RFC 5321 4.1.1.4: the end of
	// data clears the server's buffers).
	c.rsetDue = true
	c.used = true
	if pipelining {
		err = t.pipelined(rset)
	} else {
		err = t.stepwise()
	}
	if err == nil && c.r.Buffered() > 0 {
		// The last reply owed has been read, and there is more: the
		// session is out of step, and not to be used again. (This
		// transaction's outcome stands: the surplus most likely came
		// after it, as from a server that answers the end of data twice.)
		c.broken = ErrOutOfStep
	}
	if err == nil && t.res.Accepted() > 0 && t.res.Data == nil {
		c.rsetDue = false
	}
	return t.res, err
}

// txn is one transaction in progress.
type txn struct {
	c        *Client
	mail     string
	rcpts    []string
	body     io.Reader
	chunking bool
	k        canon
	res      Result
	mailErr  error
}

// pipelined sends MAIL, the RCPTs and DATA (or the first BDAT, unless its
// chunk could be read as commands) in one flight, led by the RSET a
// previous transaction left due, then reads their replies in order.
func (t *txn) pipelined(rset bool) error {
	c := t.c
	if rset {
		c.command("RSET")
	}
	c.command("%s", t.mail)
	for _, l := range t.rcpts {
		c.command("%s", l)
	}
	var last, withEnvelope bool
	if t.chunking {
		var err error
		if last, err = t.readChunk(); err != nil {
			return err
		}
		// The first chunk goes with the envelope unless it could be read
		// as commands (see mayRunAsCommands).
		if withEnvelope = !mayRunAsCommands(c.chunk); withEnvelope {
			t.putChunk(last)
		} else {
			// NOOP ends the group (RFC 2920 3.1), so that a server that
			// holds its replies until a group ends sends the RCPTs'.
			c.command("NOOP")
		}
	} else {
		c.command("DATA")
	}
	if err := c.flush(max(c.t.Command, c.t.Block)); err != nil {
		return err
	}
	if rset {
		if _, err := c.expect("RSET", 250, c.t.Command); err != nil {
			return refusedRSET(c, err)
		}
	}
	if err := t.readEnvelope(); err != nil {
		return err
	}
	if !t.chunking {
		return t.finishDATA()
	}
	if !withEnvelope {
		if _, err := c.read(c.t.Command); err != nil { // NOOP's, whatever it says
			return err
		}
		if c.r.Buffered() > 0 {
			// Nothing more is owed, yet the server says more: a reply
			// too many shifted the flight's by one, so the recipients'
			// were misread and this "NOOP's" was the last RCPT's; the
			// real one would be read as the chunk's, and a refused
			// recipient counted as delivered. Nothing is sent.
			c.broken = ErrOutOfStep
			return c.broken
		}
		switch {
		case t.mailErr != nil:
			return t.mailErr
		case t.res.Accepted() == 0:
			return nil // nothing sent for a transaction without recipients
		}
		t.putChunk(last)
		if err := c.flush(c.t.Block); err != nil {
			return err
		}
	}
	return t.finishBDAT(last, true)
}

// refusedRSET gives up a session whose server did not take the RSET
// before a transaction: out of step, or refusing RSET, it is no session to
// send on. The error deliberately does not wrap the reply: a 5xx to RSET
// says nothing about the message, and must not fail it for good (the
// caller tries a new connection, as it did when RSET was checked before
// the session went back to the pool).
func refusedRSET(c *Client, err error) error {
	c.broken = fmt.Errorf("the server did not take RSET: %v", err)
	return c.broken
}

// stepwise sends one command per round trip, for a server without
// PIPELINING.
func (t *txn) stepwise() error {
	c := t.c
	c.command("%s", t.mail)
	if err := c.flush(c.t.Command); err != nil {
		return err
	}
	rep, err := c.read(c.t.Command)
	if err != nil {
		return err
	}
	if rep.Code != 250 {
		return &Error{Command: "MAIL", Reply: rep}
	}
	for i, l := range t.rcpts {
		c.command("%s", l)
		if err := c.flush(c.t.Command); err != nil {
			return err
		}
		if t.res.Rcpts[i], err = t.rcptReply(); err != nil {
			return err
		}
	}
	if t.res.Accepted() == 0 {
		return nil
	}
	if t.chunking {
		last, err := t.writeChunk()
		if err != nil {
			return err
		}
		if err := c.flush(c.t.Block); err != nil {
			return err
		}
		return t.finishBDAT(last, false)
	}
	c.command("DATA")
	if err := c.flush(c.t.Command); err != nil {
		return err
	}
	return t.finishDATA()
}

// readEnvelope reads the replies to MAIL and to each RCPT.
func (t *txn) readEnvelope() error {
	c := t.c
	rep, err := c.read(c.t.Command)
	if err != nil {
		return err
	}
	if rep.Code != 250 {
		t.mailErr = &Error{Command: "MAIL", Reply: rep}
	}
	for i := range t.rcpts {
		if t.res.Rcpts[i], err = t.rcptReply(); err != nil {
			return err
		}
	}
	if t.mailErr != nil {
		// The RCPTs were answered (503, most likely) without a
		// transaction: none of them counts.
		for i := range t.res.Rcpts {
			if t.res.Rcpts[i] == nil {
				t.res.Rcpts[i] = t.mailErr
			}
		}
	}
	return nil
}

func (t *txn) rcptReply() (error, error) {
	rep, err := t.c.read(t.c.t.Command)
	if err != nil {
		return nil, err
	}
	// RFC 5321 4.2.5 allows 251 (will forward) as an acceptance too.
	if rep.Code != 250 && rep.Code != 251 {
		return &Error{Command: "RCPT", Reply: rep}, nil
	}
	return nil, nil
}

// finishDATA reads the reply to DATA and, on 354, sends the message.
func (t *txn) finishDATA() error {
	c := t.c
	rep, err := c.read(c.t.Command)
	if err != nil {
		return err
	}
	accepted := t.res.Accepted()
	if rep.Code != 354 && c.r.Buffered() > 0 {
		// Nothing was sent after DATA, yet the server says more: a
		// reply too many earlier in the flight shifted every reply by
		// one, and this one was a recipient's (the 354 is still to be
		// read). It is no refusal of the message.
		c.broken = ErrOutOfStep
		return c.broken
	}
	if rep.Code != 354 {
		if t.mailErr != nil {
			return t.mailErr
		}
		if accepted == 0 {
			return nil // the DATA a pipelining client sends anyway, refused
		}
		return &Error{Command: "DATA", Reply: rep}
	}
	if accepted == 0 {
		// RFC 2920 3.1: a server that took DATA although no recipient was
		// accepted gets the end of data at once, and its reply is read
		// to stay in step; nothing was delivered.
		c.w.WriteString(".\r\n")
		if err := c.flush(c.t.Command); err != nil {
			return err
		}
		if _, err := c.read(c.t.FinalDot); err != nil {
			return err
		}
		return t.mailErr
	}
	t.k.stuff = true
	if err := t.copyBody(c.w); err != nil {
		return err
	}
	c.w.WriteString(".\r\n")
	if err := c.flush(c.t.Block); err != nil {
		return err
	}
	final, err := c.read(c.t.FinalDot)
	if err != nil {
		return err
	}
	if final.Code != 250 {
		t.res.Data = &Error{Command: "end of data", Reply: final}
	}
	return nil
}

// finishBDAT reads the reply to the BDAT sent with the envelope (in the
// same flight when pipelined), then sends and settles the other chunks.
func (t *txn) finishBDAT(last, pipelined bool) error {
	c := t.c
	rep, err := c.read(c.chunkTimeout(last))
	if err != nil {
		return err
	}
	if t.mailErr != nil {
		return t.mailErr
	}
	if t.res.Accepted() == 0 {
		// The server refused the chunk (RFC 3030 3: it still read its
		// bytes, so the session is in step); nothing was delivered.
		return nil
	}
	if rep.Code != 250 {
		t.res.Data = &Error{Command: "BDAT", Reply: rep}
		return nil
	}
	if last {
		return nil
	}
	// The rest of the message: pipelined, the chunks follow one another
	// and their replies are read after the last (RFC 3030 4.2); else one
	// at a time.
	sent := 0
	for !last {
		if last, err = t.writeChunk(); err != nil {
			return err
		}
		sent++
		if !pipelined || last {
			if err := c.flush(c.t.Block); err != nil {
				return err
			}
		}
		if !pipelined {
			if err := t.chunkReply(last); err != nil {
				return err
			}
			if t.res.Data != nil {
				return nil // not sending the rest of a refused message
			}
			sent = 0
		}
	}
	for i := 0; i < sent; i++ {
		if err := t.chunkReply(i == sent-1); err != nil {
			return err
		}
	}
	return nil
}

// chunkTimeout is how long a BDAT's reply may take: the last one ends the
// message, and gets the final dot's time (RFC 5321 4.5.3.2.6).
func (c *Client) chunkTimeout(last bool) time.Duration {
	if last {
		return c.t.FinalDot
	}
	return c.t.Command
}

// chunkReply reads a BDAT's reply; the first refusal is the message's.
func (t *txn) chunkReply(last bool) error {
	c := t.c
	rep, err := c.read(c.chunkTimeout(last))
	if err != nil {
		return err
	}
	if rep.Code != 250 && t.res.Data == nil {
		t.res.Data = &Error{Command: "BDAT", Reply: rep}
	}
	return nil
}

// writeChunk buffers "BDAT <n>" (with LAST at the end of the message) and
// the chunk itself: n is the length of the bytes that follow, counted
// after canonicalization, so it is exact by construction.
func (t *txn) writeChunk() (last bool, err error) {
	if last, err = t.readChunk(); err != nil {
		return false, err
	}
	t.putChunk(last)
	return last, nil
}

// readChunk reads the next chunk of the message, canonical, into c.chunk.
func (t *txn) readChunk() (last bool, err error) {
	c := t.c
	chunk := c.chunk[:0]
	if c.rbuf == nil {
		c.rbuf = make([]byte, 32<<10)
	}
	for len(chunk) < chunkSize {
		n, err := t.body.Read(c.rbuf)
		chunk = t.k.append(chunk, c.rbuf[:n])
		if err == io.EOF {
			chunk, last = t.k.end(chunk), true
			break
		}
		if err != nil {
			c.chunk = chunk
			c.broken = fmt.Errorf("reading the message: %w", err)
			return false, c.broken
		}
	}
	c.chunk = chunk
	return last, nil
}

// putChunk buffers "BDAT <n>" and the chunk readChunk read.
func (t *txn) putChunk(last bool) {
	c := t.c
	if last {
		c.command("BDAT %d LAST", len(c.chunk))
	} else {
		c.command("BDAT %d", len(c.chunk))
	}
	c.out.timeout = c.t.Block
	c.w.Write(c.chunk)
}

// mayRunAsCommands reports whether a chunk holds a line that a server
// reading it as commands would take for part of a transaction: MAIL, RCPT,
// DATA or BDAT, in any case, where a line starts (after CR or LF), after
// any blanks or control bytes a lenient server may skip (NUL, VT, FF...),
// or anywhere past the first 510 octets of a line, where a server that
// reads commands into a fixed buffer cuts an over-long line into pieces
// (RFC 5321 4.5.3.1.4 makes 512 octets with CRLF the least it may hold).
// A chunk sent in the envelope's flight reaches the server before it has
// answered the RCPTs; if it refused them all and then, against RFC 3030 3,
// did not read the refused chunk, the message would be read as commands,
// and a submitter could have it send a message of its own making from
// this relay (SMTP smuggling). Such a chunk waits for the RCPT replies and
// goes only to a transaction with a recipient. The scan is one pass over
// the chunk, without allocating.
func mayRunAsCommands(chunk []byte) bool {
	lineStart, leading := 0, true
	for i, b := range chunk {
		switch {
		case b == '\r' || b == '\n':
			lineStart, leading = i+1, true
			continue
		case leading && (b <= ' ' || b == 0x7f):
			continue
		}
		if (leading || i-lineStart >= maxCommandLine-2) && isTxnCommand(chunk[i:]) {
			return true
		}
		leading = false
	}
	return false
}

// maxCommandLine is the command line, CRLF included, that every server
// must take (RFC 5321 4.5.3.1.4).
const maxCommandLine = 512

// isTxnCommand reports whether p starts with MAIL, RCPT, DATA or BDAT in
// any case (b|0x20 folds an ASCII letter to lower case, and only a letter
// folds to one).
func isTxnCommand(p []byte) bool {
	if len(p) < 4 {
		return false
	}
	switch p[0] | 0x20 {
	case 'm', 'r', 'd', 'b':
	default:
		return false
	}
	for _, kw := range [...]string{"mail", "rcpt", "data", "bdat"} {
		if p[0]|0x20 == kw[0] && p[1]|0x20 == kw[1] && p[2]|0x20 == kw[2] && p[3]|0x20 == kw[3] {
			return true
		}
	}
	return false
}

// copyBody writes the message for DATA: canonical and dot-stuffed.
func (t *txn) copyBody(w io.Writer) error {
	c := t.c
	if c.rbuf == nil {
		c.rbuf = make([]byte, 32<<10)
	}
	c.out.timeout = c.t.Block
	for {
		n, err := t.body.Read(c.rbuf)
		c.chunk = t.k.append(c.chunk[:0], c.rbuf[:n])
		if err == io.EOF {
			c.chunk = t.k.end(c.chunk)
		}
		if _, werr := w.Write(c.chunk); werr != nil {
			c.broken = werr
			return werr
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			// Mid-message: the server would take what was sent so far
			// for the whole message if a dot followed. Nothing follows.
			c.broken = fmt.Errorf("reading the message: %w", err)
			return c.broken
		}
	}
}

var errLineBreak = errors.New("a line break in an address or parameter")

// mailCommand renders MAIL FROM with the parameters the server takes.
func (c *Client) mailCommand(m Mail) (string, error) {
	if strings.ContainsAny(m.From+m.EnvelopeID+m.Return, "\r\n\x00") {
		return "", errLineBreak
	}
	var b strings.Builder
	b.WriteString("MAIL FROM:<" + m.From + ">")
	// As go-smtp's client did: BODY=8BITMIME wherever offered, which is
	// right for 7-bit content too (RFC 6152 2).
	if ok, _ := c.Extension("8BITMIME"); ok {
		b.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := c.Extension("SIZE"); ok && m.Size > 0 {
		b.WriteString(" SIZE=" + strconv.FormatInt(m.Size, 10))
	}
	if m.RequireTLS {
		if ok, _ := c.Extension("REQUIRETLS"); !ok {
			return "", errors.New("the server does not offer REQUIRETLS")
		}
		b.WriteString(" REQUIRETLS")
	}
	if m.UTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			return "", errors.New("the server does not offer SMTPUTF8")
		}
		b.WriteString(" SMTPUTF8")
	}
	if ok, _ := c.Extension("DSN"); ok {
		switch ret := strings.ToUpper(m.Return); ret {
		case "FULL", "HDRS":
			b.WriteString(" RET=" + ret)
		}
		if m.EnvelopeID != "" {
			b.WriteString(" ENVID=" + xtext(m.EnvelopeID))
		}
	}
	return b.String(), nil
}

// rcptCommand renders RCPT TO with the DSN parameters, where offered.
func (c *Client) rcptCommand(r Rcpt, utf8 bool) (string, error) {
	if strings.ContainsAny(r.Addr+r.Orig+r.OrigType+strings.Join(r.Notify, ","), "\r\n\x00") {
		return "", errLineBreak
	}
	var b strings.Builder
	b.WriteString("RCPT TO:<" + r.Addr + ">")
	if ok, _ := c.Extension("DSN"); ok {
		if len(r.Notify) > 0 {
			b.WriteString(" NOTIFY=" + strings.ToUpper(strings.Join(r.Notify, ",")))
		}
		if r.Orig != "" {
			typ := strings.ToUpper(r.OrigType)
			switch {
			case typ == "UTF-8" && utf8:
				b.WriteString(" ORCPT=UTF-8;" + utf8AddrUnitext(r.Orig))
			case typ == "UTF-8":
				b.WriteString(" ORCPT=UTF-8;" + utf8AddrXtext(r.Orig))
			default:
				b.WriteString(" ORCPT=" + typ + ";" + xtext(r.Orig))
			}
		}
	}
	return b.String(), nil
}
