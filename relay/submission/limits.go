package submission

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// limitListener refuses connections beyond a per-address cap with a 421
// greeting, so that a client learns why instead of hanging. At the total
// cap it makes room by closing the oldest connection that has not
// authenticated: idle connections from many addresses (slowloris) can then
// never lock out a client that has a password, and only a client that has
// one can hold a slot.
type limitListener struct {
	net.Listener
	hostname       string
	total, perHost *atomic.Int64 // shared with the server, which may change them

	mu     sync.Mutex
	open   int
	byHost map[string]int
	conns  map[*countedConn]struct{}
}

func newLimitListener(l net.Listener, hostname string, total, perHost *atomic.Int64) *limitListener {
	return &limitListener{Listener: l, hostname: hostname, total: total, perHost: perHost, byHost: map[string]int{}, conns: map[*countedConn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := remoteHost(c)
		refuse := ""
		l.mu.Lock()
		total, perHost := int(l.total.Load()), int(l.perHost.Load())
		for refuse == "" && total > 0 && l.open >= total {
			victim := l.oldestUnauthenticated()
			if victim == nil {
				refuse = "Too many connections"
				break
			}
			l.mu.Unlock()
			victim.Close() // releases its slot
			l.mu.Lock()
		}
		if refuse == "" && perHost > 0 && l.byHost[host] >= perHost {
			refuse = "Too many connections from your address"
		}
		if refuse == "" {
			l.open++
			l.byHost[host]++
		}
		l.mu.Unlock()
		if refuse != "" {
			go func() {
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "421 4.7.0 %s %s, try again later\r\n", l.hostname, refuse)
				c.Close()
			}()
			continue
		}
		cc := &countedConn{Conn: c, opened: time.Now()}
		cc.release = func() { l.release(host, cc) }
		l.mu.Lock()
		l.conns[cc] = struct{}{}
		l.mu.Unlock()
		return cc, nil
	}
}

// oldestUnauthenticated picks the connection to give up at the total cap.
// Called with l.mu held.
func (l *limitListener) oldestUnauthenticated() *countedConn {
	var oldest *countedConn
	for c := range l.conns {
		if !c.authenticated.Load() && !c.closing.Load() && (oldest == nil || c.opened.Before(oldest.opened)) {
			oldest = c
		}
	}
	if oldest != nil {
		oldest.closing.Store(true)
	}
	return oldest
}

func (l *limitListener) release(host string, c *countedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
	l.open--
	if l.byHost[host]--; l.byHost[host] <= 0 {
		delete(l.byHost, host)
	}
}

type countedConn struct {
	net.Conn
	opened        time.Time
	authenticated atomic.Bool // set by the session after a successful AUTH
	closing       atomic.Bool // chosen to make room
	once          sync.Once
	release       func()

	// Replies are held until the server next reads (or closes), so the
	// replies to a pipelined group of commands leave in one write
	// (RFC 2920 3.2 lets a server buffer them so; it must not wait for
	// more input before sending what it has, which a read here is).
	// go-smtp flushes after every reply; under TLS each is its own record,
	// and this makes the records of one group one system call.
	wmu     sync.Mutex
	pending []byte
}

// maxHeldReplies bounds what is held back: a larger reply is written at once.
const maxHeldReplies = 16 << 10

func (c *countedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.pending)+len(p) > maxHeldReplies {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > maxHeldReplies {
			return c.Conn.Write(p)
		}
	}
	c.pending = append(c.pending, p...)
	return len(p), nil
}

func (c *countedConn) flushLocked() error {
	if len(c.pending) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.pending)
	c.pending = c.pending[:0]
	if cap(c.pending) > maxHeldReplies {
		c.pending = nil
	}
	return err
}

func (c *countedConn) Read(p []byte) (int, error) {
	c.wmu.Lock()
	err := c.flushLocked()
	c.wmu.Unlock()
	if err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

// A write deadline already past is how crypto/tls ends writing at Close
// (after its close_notify): what is held goes first, under the deadline it
// was written with.
func (c *countedConn) SetWriteDeadline(t time.Time) error {
	c.flushBefore(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *countedConn) SetDeadline(t time.Time) error {
	c.flushBefore(t)
	return c.Conn.SetDeadline(t)
}

func (c *countedConn) flushBefore(deadline time.Time) {
	if deadline.IsZero() || deadline.After(time.Now()) {
		return
	}
	c.wmu.Lock()
	c.flushLocked()
	c.wmu.Unlock()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	// What the session said last (221, a 421) still goes, within the
	// write deadline the server set for it.
	c.wmu.Lock()
	c.flushLocked()
	c.wmu.Unlock()
	return c.Conn.Close()
}

func remoteHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// closeAll cuts every connection still open.
func (l *limitListener) closeAll() { l.closeIf(func(*countedConn) bool { return true }) }

// closeIf cuts the open connections that cut selects.
func (l *limitListener) closeIf(cut func(*countedConn) bool) {
	l.mu.Lock()
	var conns []*countedConn
	for c := range l.conns {
		if cut(c) {
			conns = append(conns, c)
		}
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// countedUnder finds the accepted connection beneath TLS layers.
func countedUnder(c net.Conn) *countedConn {
	for {
		switch x := c.(type) {
		case *countedConn:
			return x
		case *tls.Conn:
			c = x.NetConn()
		case *handshakeConn:
			c = x.Conn
		default:
			return nil
		}
	}
}
