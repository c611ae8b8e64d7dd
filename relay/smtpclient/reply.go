package smtpclient

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Reply is one server reply: its code, the enhanced status code (RFC 3463,
// RFC 2034) when the server gave one, and its text, the lines joined by
// "\n" with the code and the enhanced code taken off each.
type Reply struct {
	Code     int
	Enhanced string // "5.1.1", or "" when the reply carried none
	Text     string
}

// Error is a reply that was not the one a command needed.
type Error struct {
	Command string // MAIL, RCPT, DATA, BDAT, AUTH, ...
	Reply
}

func (e *Error) Error() string {
	if e.Enhanced != "" {
		return fmt.Sprintf("%s: %d %s %s", e.Command, e.Code, e.Enhanced, e.Text)
	}
	return fmt.Sprintf("%s: %d %s", e.Command, e.Code, e.Text)
}

// ErrProtocol is wrapped by every error about a reply that is not SMTP.
var ErrProtocol = errors.New("malformed SMTP reply")

// maxReplyLine bounds one line of a reply (RFC 5321 4.5.3.1.5 says 512
// octets; servers send longer, but not this long). The session as a whole
// is bounded by the caller's connection (delivery's cappedConn).
const maxReplyLine = 16 << 10

// maxReplyLines bounds the lines of one reply: an EHLO reply has a few
// dozen; a server that sends more is not speaking SMTP.
const maxReplyLines = 1000

// readReply reads one reply, single- or multiline (RFC 5321 4.2.1): every
// line starts with the same three-digit code, followed by "-" on all lines
// but the last, and by a space (or nothing) on the last.
func readReply(r *bufio.Reader) (Reply, error) {
	var rep Reply
	var text strings.Builder
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return Reply{}, fmt.Errorf("%w: more than %d lines", ErrProtocol, maxReplyLines)
		}
		line, err := readLine(r)
		if err != nil {
			return Reply{}, err
		}
		code, last, rest, err := parseLine(line)
		if err != nil {
			return Reply{}, err
		}
		if n == 0 {
			rep.Code = code
			rep.Enhanced = enhancedCode(code, rest)
		} else if code != rep.Code {
			return Reply{}, fmt.Errorf("%w: line with code %d in a reply with code %d", ErrProtocol, code, rep.Code)
		}
		if rep.Enhanced != "" {
			// RFC 2034 4: each line starts with the enhanced code.
			rest = bytes.TrimPrefix(rest, []byte(rep.Enhanced+" "))
			if string(rest) == rep.Enhanced {
				rest = nil
			}
		}
		if n > 0 {
			text.WriteByte('\n')
		}
		text.Write(rest)
		if last {
			rep.Text = text.String()
			return rep, nil
		}
	}
}

// readLine reads a line without its CRLF (a bare LF is taken too).
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		long := append([]byte(nil), line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(long) > maxReplyLine {
				return nil, fmt.Errorf("%w: a reply line too long (over %d bytes)", ErrProtocol, maxReplyLine)
			}
			line, err = r.ReadSlice('\n')
			long = append(long, line...)
		}
		line = long
	}
	if err != nil {
		return nil, err
	}
	if len(line) > maxReplyLine {
		return nil, fmt.Errorf("%w: a reply line too long (over %d bytes)", ErrProtocol, maxReplyLine)
	}
	line = line[:len(line)-1]
	return bytes.TrimSuffix(line, []byte("\r")), nil
}

// parseLine splits "250-text" into its code, whether it is the last line,
// and the text.
func parseLine(line []byte) (code int, last bool, rest []byte, err error) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return 0, false, nil, fmt.Errorf("%w: %q", ErrProtocol, truncate(line))
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	switch {
	case len(line) == 3:
		return code, true, nil, nil
	case line[3] == ' ':
		return code, true, line[4:], nil
	case line[3] == '-':
		return code, false, line[4:], nil
	}
	return 0, false, nil, fmt.Errorf("%w: %q", ErrProtocol, truncate(line))
}

// enhancedCode returns the enhanced status code that starts text, if it
// is one whose class agrees with the reply code (RFC 3463 2: the class
// "2", "4" or "5" repeats the reply's); otherwise "", and the text keeps
// whatever it started with.
func enhancedCode(code int, text []byte) string {
	word := text
	if i := bytes.IndexByte(text, ' '); i >= 0 {
		word = text[:i]
	}
	parts := bytes.Split(word, []byte("."))
	if len(parts) != 3 || len(parts[0]) != 1 || int(parts[0][0]-'0') != code/100 {
		return ""
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 {
			return ""
		}
		for _, c := range p {
			if !isDigit(c) {
				return ""
			}
		}
	}
	// RFC 3463 2 allows no leading zeros ("5.01.1" is not a code).
	s, _ := strconv.Atoi(string(parts[1]))
	d, _ := strconv.Atoi(string(parts[2]))
	if string(parts[1]) != strconv.Itoa(s) || string(parts[2]) != strconv.Itoa(d) {
		return ""
	}
	return string(word)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}
