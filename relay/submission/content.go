package submission

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// crlfGuard passes content through while checking that every CR is followed
// by LF and every LF preceded by CR. A lone CR or LF is what SMTP smuggling
// (2023) hides a second message behind: a next hop that reads it as a line
// end sees an end-of-data where we did not. Refusing it is the only safe
// answer for a relay (RFC 5321 2.3.8 and 4.1.1.4). Content that does not end
// in CRLF (possible with BDAT) gets one, so the next hop's DATA stays framed.
type crlfGuard struct {
	r       io.Reader
	prevCR  bool
	last    byte
	n       int64
	pending []byte
	err     error
}

func (g *crlfGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		if len(g.pending) > 0 {
			n := copy(p, g.pending)
			g.pending = g.pending[n:]
			g.n += int64(n)
			return n, nil
		}
		return 0, g.err
	}
	n, err := g.r.Read(p)
	for _, c := range p[:n] {
		switch {
		case g.prevCR && c != '\n':
			g.err = errBareCR
		case c == '\n' && !g.prevCR:
			g.err = errBareLF
		}
		if g.err != nil {
			return 0, g.err
		}
		g.prevCR = c == '\r'
	}
	if n > 0 {
		g.last = p[n-1]
	}
	g.n += int64(n)
	if err == io.EOF {
		if g.prevCR {
			g.err = errBareCR
			return 0, g.err
		}
		g.err = io.EOF
		if g.n > 0 && g.last != '\n' {
			g.pending = []byte("\r\n")
		}
		if n == 0 {
			return g.Read(p)
		}
		return n, nil
	}
	return n, err
}

// deadlineReader gives every read from the client its own deadline: go-smtp's
// ReadTimeout covers the whole transfer, which would cut a slow 50 MB upload
// and let a trickle hold a connection for ever (RFC 5321 4.5.3.2.6: 3 minutes
// per data block).
type deadlineReader struct {
	r       io.Reader
	conn    net.Conn
	timeout time.Duration
}

func (d deadlineReader) Read(p []byte) (int, error) {
	if d.timeout > 0 {
		d.conn.SetReadDeadline(time.Now().Add(d.timeout))
	}
	return d.r.Read(p)
}

// headerFacts is what Postern needs to know of a message's header section.
type headerFacts struct {
	hasMessageID, hasDate bool
	messageID             string // as the message gives it, for the delivery evidence
	// senders holds the header fields that name the message's author or
	// sender (From and Sender, every instance, unfolded), which must all
	// be the user's (headerfrom.go).
	senders []senderField
	// tlsOptional: "TLS-Required: No" asks that recipient-published TLS
	// policies be ignored for this message (RFC 8689 5).
	tlsOptional bool
}

const maxHeaderBytes = 256 << 10

// readHeader reads the header section (up to and including the empty line
// that ends it, or the whole message when it has no body) and notes which of
// the headers an MSA may add are present.
func readHeader(r *bufio.Reader) ([]byte, headerFacts, error) {
	var buf bytes.Buffer
	var facts headerFacts
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, facts, errLineTooLong
		}
		buf.Write(line)
		if buf.Len() > maxHeaderBytes {
			return nil, facts, errHeaderTooLarge
		}
		if err == io.EOF {
			return buf.Bytes(), facts, nil
		}
		if err != nil {
			return nil, facts, err
		}
		if len(line) <= 2 { // "\r\n": end of the header section
			return buf.Bytes(), facts, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			// A folded line continues the field above it (RFC 5322
			// 2.2.3): an address can hide on it.
			if n := len(facts.senders); n > 0 && facts.senders[n-1].open {
				facts.senders[n-1].value += string(line)
			}
			continue
		}
		if n := len(facts.senders); n > 0 {
			facts.senders[n-1].open = false
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		// TrimSpace: obsolete syntax allows white space before the colon
		// (RFC 5322 4.5), and receivers honour it.
		switch field := strings.ToLower(string(bytes.TrimSpace(name))); field {
		case "message-id":
			facts.hasMessageID = true
			facts.messageID = strings.TrimSpace(string(value))
		case "date":
			facts.hasDate = true
		case "from", "sender":
			facts.senders = append(facts.senders, senderField{name: field, value: string(value), open: true})
		case "tls-required":
			facts.tlsOptional = strings.EqualFold(string(bytes.TrimSpace(value)), "no")
		}
	}
}

// traceHeaders is what Postern prepends: Received always, Message-ID and
// Date when missing (RFC 6409 8.2 and 8.3).
type traceInfo struct {
	helo, clientIP, hostname, user, id string
	tlsVersion, tlsCipher              string
	now                                time.Time
}

func (t traceInfo) headers(facts headerFacts) []byte {
	var b bytes.Buffer
	// RFC 3848: ESMTPSA when authenticated over TLS; Postern accepts
	// nothing else, but say what was true.
	with := "ESMTP"
	if t.tlsVersion != "" {
		with += "S"
	}
	if t.user != "" {
		with += "A"
	}
	fmt.Fprintf(&b, "Received: from %s (%s)\r\n\tby %s (Postern) with %s", t.helo, bracketIP(t.clientIP), t.hostname, with)
	if t.tlsVersion != "" {
		fmt.Fprintf(&b, "\r\n\t(version=%s cipher=%s)", t.tlsVersion, t.tlsCipher)
	}
	if t.user != "" {
		fmt.Fprintf(&b, "\r\n\t(authenticated user %s)", t.user)
	}
	fmt.Fprintf(&b, "\r\n\tid %s; %s\r\n", t.id, t.now.Format(time.RFC1123Z))
	if !facts.hasMessageID {
		fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", t.id, t.hostname)
	}
	if !facts.hasDate {
		fmt.Fprintf(&b, "Date: %s\r\n", t.now.Format(time.RFC1123Z))
	}
	return b.Bytes()
}

func bracketIP(ip string) string {
	if strings.Contains(ip, ":") {
		return "[IPv6:" + ip + "]"
	}
	return "[" + ip + "]"
}

// cleanHelo keeps the client's HELO name fit for a header: it is the
// client's word, and must not be able to inject anything.
func cleanHelo(s string) string {
	if len(s) == 0 || len(s) > 255 {
		return "unknown"
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-:[]_", c)) {
			return "invalid"
		}
	}
	return s
}
