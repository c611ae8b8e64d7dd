package delivery

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawMX is an SMTP server written on the raw socket, so that tests can see
// how the client uses the wire: which commands came together, whether the
// client waited for each reply, and the exact bytes of each message.
//
// Where it offers PIPELINING it holds its replies until the client ends a
// group (DATA, a BDAT, or a command that must stand alone), as a server
// that reads ahead would answer; a client that waits for a reply in the
// middle of a group (go-smtp's did) is noted as a violation after
// holdWait. Where it does not offer PIPELINING it notes any command that
// arrives before the reply to the one before it.
type rawMX struct {
	pipelining, chunking, dsn bool
	maxRcpts                  int                      // >0: RCPTs beyond this many in a transaction get 452 4.5.3
	rcptReply                 func(addr string) string // a reply line for addr, "" to accept
	data354Anyway             bool                     // answer DATA with 354 even when no recipient was accepted
	size                      int                      // the SIZE it announces; 0: 50000000
	rsetReply                 string                   // the reply to RSET; "": 250
	// bdatUnreadWhenRefused: refuse a BDAT in a transaction without
	// recipients without reading its chunk, against RFC 3030 3, so that
	// the chunk is read as commands (a server open to SMTP smuggling).
	bdatUnreadWhenRefused bool

	mu         sync.Mutex
	conns      int
	groups     []string // pipelined: the commands of each group, space separated
	lines      []string // every command line
	msgs       []rawMessage
	violations []string
}

type rawMessage struct {
	From  string
	Rcpts []string
	Data  []byte
	BDAT  []int // the chunk sizes, when sent by BDAT
}

const holdWait = time.Second

func (m *rawMX) serve(t *testing.T) int {
	return hostileMX(t, func(c net.Conn, r *bufio.Reader) { m.session(c, r) })
}

func (m *rawMX) violate(format string, args ...any) {
	m.mu.Lock()
	m.violations = append(m.violations, fmt.Sprintf(format, args...))
	m.mu.Unlock()
}

func (m *rawMX) snapshot() ([]rawMessage, []string, []string, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]rawMessage(nil), m.msgs...), append([]string(nil), m.groups...), append([]string(nil), m.violations...), m.conns
}

// delivered returns the messages that reached it, without notices.
func (m *rawMX) delivered() []rawMessage {
	msgs, _, _, _ := m.snapshot()
	var out []rawMessage
	for _, msg := range msgs {
		if msg.From != "" {
			out = append(out, msg)
		}
	}
	return out
}

func (m *rawMX) ehlo() string {
	size := m.size
	if size == 0 {
		size = 50000000
	}
	ext := []string{"raw.test", "8BITMIME", "ENHANCEDSTATUSCODES", "SIZE " + strconv.Itoa(size)}
	if m.pipelining {
		ext = append(ext, "PIPELINING")
	}
	if m.chunking {
		ext = append(ext, "CHUNKING")
	}
	if m.dsn {
		ext = append(ext, "DSN")
	}
	var b strings.Builder
	for i, e := range ext {
		sep := "-"
		if i == len(ext)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + e + "\r\n")
	}
	return b.String()
}

func (m *rawMX) session(c net.Conn, r *bufio.Reader) {
	m.mu.Lock()
	m.conns++
	m.mu.Unlock()
	fmt.Fprintf(c, "220 raw.test ESMTP\r\n")
	var held []string
	var group []string
	answer := func() {
		c.Write([]byte(strings.Join(held, "")))
		if m.pipelining && len(group) > 0 {
			m.mu.Lock()
			m.groups = append(m.groups, strings.Join(group, " "))
			m.mu.Unlock()
		}
		held, group = nil, nil
	}
	var cur rawMessage
	inTxn := false
	for {
		if len(held) > 0 {
			c.SetReadDeadline(time.Now().Add(holdWait))
		}
		line, err := r.ReadString('\n')
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			m.violate("the client waited for replies in the middle of the group %q", strings.Join(group, " "))
			c.SetReadDeadline(time.Time{})
			answer()
			continue
		}
		if err != nil {
			return
		}
		c.SetReadDeadline(time.Time{})
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		m.mu.Lock()
		m.lines = append(m.lines, line)
		m.mu.Unlock()
		if !m.pipelining && verb != "BDAT" {
			m.noReadAhead(c, r, line)
		}
		group = append(group, verb)
		reply := func(s string) { held = append(held, s+"\r\n") }
		switch verb {
		case "EHLO":
			held = append(held, m.ehlo())
			answer()
		case "MAIL":
			cur, inTxn = rawMessage{From: between(line, "<", ">")}, true
			reply("250 2.1.0 ok")
		case "RCPT":
			addr := between(line, "<", ">")
			switch {
			case !inTxn:
				reply("503 5.5.1 MAIL first")
			case m.maxRcpts > 0 && len(cur.Rcpts) >= m.maxRcpts:
				reply("452 4.5.3 too many recipients")
			case m.rcptReply != nil && m.rcptReply(addr) != "":
				reply(m.rcptReply(addr))
			default:
				cur.Rcpts = append(cur.Rcpts, addr)
				reply("250 2.1.5 ok")
			}
		case "DATA":
			if !inTxn || (len(cur.Rcpts) == 0 && !m.data354Anyway) {
				reply("554 5.5.1 no valid recipients")
				answer()
				continue
			}
			reply("354 go on")
			answer()
			data, err := readDotted(r)
			if err != nil {
				return
			}
			if !m.pipelining {
				m.noReadAhead(c, r, "end of data")
			}
			if len(cur.Rcpts) == 0 {
				fmt.Fprintf(c, "554 5.5.1 no valid recipients\r\n")
			} else {
				cur.Data = data
				m.store(cur)
				fmt.Fprintf(c, "250 2.0.0 queued\r\n")
			}
			inTxn = false
		case "BDAT":
			f := strings.Fields(line)
			n, err := strconv.Atoi(f[1])
			if err != nil {
				return
			}
			if m.bdatUnreadWhenRefused && (!inTxn || len(cur.Rcpts) == 0) {
				reply("554 5.5.1 no valid recipients")
				answer()
				continue
			}
			chunk := make([]byte, n)
			if _, err := io.ReadFull(r, chunk); err != nil {
				return
			}
			if !m.pipelining {
				m.noReadAhead(c, r, line)
			}
			last := len(f) == 3 && strings.EqualFold(f[2], "LAST")
			switch {
			case !inTxn || len(cur.Rcpts) == 0:
				reply("554 5.5.1 no valid recipients")
			case last:
				cur.Data, cur.BDAT = append(cur.Data, chunk...), append(cur.BDAT, n)
				m.store(cur)
				inTxn = false
				reply("250 2.0.0 queued")
			default:
				cur.Data, cur.BDAT = append(cur.Data, chunk...), append(cur.BDAT, n)
				reply("250 2.0.0 chunk taken")
			}
			answer()
		case "RSET":
			cur, inTxn = rawMessage{}, false
			if m.rsetReply != "" {
				reply(m.rsetReply)
				break
			}
			reply("250 2.0.0 ok")
		case "NOOP":
			reply("250 2.0.0 ok")
			answer()
		case "QUIT":
			reply("221 2.0.0 bye")
			answer()
			return
		default:
			reply("500 5.5.2 what")
			answer()
		}
		if !m.pipelining {
			answer()
		}
	}
}

func (m *rawMX) store(msg rawMessage) {
	m.mu.Lock()
	m.msgs = append(m.msgs, msg)
	m.mu.Unlock()
}

// noReadAhead notes a client that sent more before the reply to what it
// sent last: nothing is buffered, and nothing comes within a short while.
func (m *rawMX) noReadAhead(c net.Conn, r *bufio.Reader, after string) {
	ahead := r.Buffered() > 0
	if !ahead {
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := r.Peek(1)
		c.SetReadDeadline(time.Time{})
		ahead = err == nil
	}
	if ahead {
		m.violate("more arrived before the reply to %q", after)
	}
}

// readDotted reads a DATA body up to the final dot, undoing the
// dot-stuffing.
func readDotted(r *bufio.Reader) ([]byte, error) {
	var data []byte
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if line == ".\r\n" {
			return data, nil
		}
		data = append(data, strings.TrimPrefix(line, ".")...)
	}
}

func between(s, open, close string) string {
	_, after, _ := strings.Cut(s, open)
	v, _, _ := strings.Cut(after, close)
	return v
}
