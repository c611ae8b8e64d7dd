package submission

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// RFC 4954 4: "If the server cannot BASE64 decode any client response, it
// MUST reject the AUTH command with a 501 reply", and a response of "*"
// cancels the exchange, also with 501. go-smtp answers undecodable base64
// with 454 4.7.0, a temporary failure, so a client would retry the same
// broken exchange. go-smtp decodes the continuation lines itself, before
// the mechanism sees them, and offers no hook there; so saslExchange runs
// the continuation lines of an exchange itself, on the session's
// connection, and gives go-smtp only its outcome.
//
// What it cannot reach: the initial response on the AUTH line itself
// ("AUTH PLAIN <response>") is decoded by go-smtp before the session is
// even asked for the mechanism, and undecodable there still gets go-smtp's
// 454 4.7.0. Closing that needs a change in go-smtp's handleAuth.
//
// Reading beneath go-smtp is safe because RFC 4954 4 forbids a client to
// send anything after AUTH until it has the server's challenge (only a
// one-round-trip initial response may be pipelined, and then no
// continuation line is read): go-smtp's buffer holds nothing more when a
// challenge goes out. Lines are read a byte at a time so that nothing
// after the response is taken from under go-smtp. A client that breaks
// that rule and sends its responses before the 334 (a script piping a
// whole session in one write) has them read by go-smtp into its buffer,
// out of reach here: its exchange waits until the command timeout and
// ends with 421 4.4.2. Such a client worked before only by luck of
// go-smtp's buffering.
type saslExchange struct {
	mech    sasl.Server
	conn    net.Conn
	timeout time.Duration
}

// maxSASLLine is the longest response line accepted: RFC 4954 4 asks
// servers to take at least 12288 octets of base64.
const maxSASLLine = 12288 + 2

var (
	errSASLCancelled = reply(501, "5.0.0", "Authentication cancelled")
	errSASLTooLong   = reply(500, "5.5.6", "Authentication Exchange line is too long") // RFC 4954 6
)

func (s *session) exchange(mech sasl.Server) sasl.Server {
	timeout := s.srv.cfg.CommandTimeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	return &saslExchange{mech: mech, conn: s.conn.Conn(), timeout: timeout}
}

// Next is called once by go-smtp, with the initial response (nil when
// there is none), and returns when the exchange is over.
func (x *saslExchange) Next(response []byte) ([]byte, bool, error) {
	for {
		challenge, done, err := x.mech.Next(response)
		if err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				// The mechanism could not parse the response: also a 501
				// (RFC 4954 4), not go-smtp's 454.
				err = errMalformedSASL
			}
			return nil, false, err
		}
		if done {
			return nil, true, nil
		}
		line, err := x.challenge(challenge)
		if err != nil {
			// The connection failed or a response overran its line: what
			// follows cannot be trusted to be framed, so the connection is
			// closed after the reply (go-smtp's own write then fails).
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				se = errReadFailed
			}
			fmt.Fprintf(x.conn, "%d %d.%d.%d %s\r\n", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
			x.conn.Close()
			return nil, false, se
		}
		if line == "*" {
			return nil, false, errSASLCancelled
		}
		if line == "=" { // an empty response, as on the AUTH line (RFC 4954 4)
			line = ""
		}
		response, err = base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, false, errMalformedSASL
		}
	}
}

// challenge sends a 334 with challenge and reads the client's response line.
func (x *saslExchange) challenge(challenge []byte) (string, error) {
	x.conn.SetWriteDeadline(time.Now().Add(x.timeout))
	if _, err := fmt.Fprintf(x.conn, "334 %s\r\n", base64.StdEncoding.EncodeToString(challenge)); err != nil {
		return "", fmt.Errorf("send challenge: %w", err)
	}
	x.conn.SetReadDeadline(time.Now().Add(x.timeout))
	var line []byte
	var b [1]byte
	for {
		if _, err := io.ReadFull(x.conn, b[:]); err != nil {
			return "", fmt.Errorf("read response: %w", err)
		}
		if b[0] == '\n' {
			break
		}
		if line = append(line, b[0]); len(line) > maxSASLLine {
			return "", errSASLTooLong
		}
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return string(line), nil
}
