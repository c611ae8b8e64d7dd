package submission

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"
)

// limitListener refuses connections beyond a total and a per-address cap
// with a 421 greeting, so that a client learns why instead of hanging.
type limitListener struct {
	net.Listener
	hostname       string
	total, perHost int

	mu     sync.Mutex
	open   int
	byHost map[string]int
	conns  map[*countedConn]struct{}
}

func newLimitListener(l net.Listener, hostname string, total, perHost int) *limitListener {
	return &limitListener{Listener: l, hostname: hostname, total: total, perHost: perHost, byHost: map[string]int{}, conns: map[*countedConn]struct{}{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host := remoteHost(c)
		l.mu.Lock()
		refuse := ""
		switch {
		case l.total > 0 && l.open >= l.total:
			refuse = "Too many connections"
		case l.perHost > 0 && l.byHost[host] >= l.perHost:
			refuse = "Too many connections from your address"
		default:
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
		cc := &countedConn{Conn: c}
		cc.release = func() { l.release(host, cc) }
		l.mu.Lock()
		l.conns[cc] = struct{}{}
		l.mu.Unlock()
		return cc, nil
	}
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
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
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
