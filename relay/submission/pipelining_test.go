package submission

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// writeCountingListener counts the writes made on the connections it
// accepts: what the kernel is asked to send, TLS records included.
type writeCountingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *writeCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &writeCountingConn{Conn: c, n: &l.writes}, nil
}

type writeCountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *writeCountingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// The replies to a pipelined group of commands leave in one write (RFC 2920
// 3.2), not one write (and one TLS record's system call) each, and each
// command still gets its own reply, in order.
func TestPipelinedRepliesLeaveInOneWrite(t *testing.T) {
	h := newHarness(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &writeCountingListener{Listener: inner}
	go h.srv.ServeSTARTTLS(l)
	r := dialRaw(t, l.Addr().String())
	r.expect("", "220")
	r.expect("EHLO client.test", "250")
	r.startTLS()
	r.expect("EHLO client.test", "250")
	r.expect("AUTH PLAIN "+plainToken(testUser, testPassword), "235")

	before := l.writes.Load()
	group := []string{"MAIL FROM:<app@example.org>", "RCPT TO:<a@dest.test>", "RCPT TO:<nobody>", "RCPT TO:<b@dest.test>", "NOOP"}
	fmt.Fprintf(r.conn, "%s\r\n", strings.Join(group, "\r\n")) // one TLS record
	var got []string
	for range group {
		got = append(got, r.reply())
	}
	want := []string{"250", "250", "501", "250", "250"}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("reply %d to %q: %q, want %s", i, group[i], got[i], want[i])
		}
	}
	if n := l.writes.Load() - before; n != 1 {
		t.Errorf("%d writes for the replies to a pipelined group of %d commands, want 1", n, len(group))
	}
	// The session goes on in order after the group.
	r.expect("RSET", "250")
	r.expect("QUIT", "221")
}
