package submission

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

// DefaultProxyHeaderTimeout bounds the wait for a PROXY protocol header on
// a connection from a trusted load balancer, which sends it at once.
const DefaultProxyHeaderTimeout = 10 * time.Second

// proxyListener speaks the HAProxy PROXY protocol (v1 text, v2 binary) on
// the submission listeners, beneath the connection limits and TLS, so that
// everything above it (the per-address limits, the AUTH throttle, the log,
// the Received header) sees the client's own address as RemoteAddr.
//
// A connection from a trusted network must open with a header; one that
// does not, or sends a malformed one, is closed without a greeting. A
// connection from anywhere else must not send one: its first bytes are
// checked, and a PROXY signature closes it (see sniffConn). Trusting a
// header from any address would let every client choose the address the
// limits and the lockout count it under.
//
// The header is read in a goroutine of its own, so a trusted peer that is
// slow to send it holds only its own connection (until the timeout), never
// the accept loop that every other client waits on.
type proxyListener struct {
	net.Listener
	srv     *Server // its trusted networks (SetProxyNetworks), log and metrics
	timeout time.Duration

	ready   chan net.Conn
	done    chan struct{}
	closing sync.Once
	wg      sync.WaitGroup

	mu      sync.Mutex
	err     error                 // why the accept loop ended
	pending map[net.Conn]struct{} // waiting for their header
}

func newProxyListener(l net.Listener, srv *Server) *proxyListener {
	timeout := srv.cfg.ProxyHeaderTimeout
	if timeout <= 0 {
		timeout = DefaultProxyHeaderTimeout
	}
	pl := &proxyListener{Listener: l, srv: srv, timeout: timeout,
		ready: make(chan net.Conn), done: make(chan struct{}), pending: map[net.Conn]struct{}{}}
	// The accept loop starts here, not at the first Accept: a Close that
	// comes before (or while) Serve starts must find the WaitGroup already
	// counting it, or Add would race with Wait.
	pl.wg.Add(1)
	go pl.acceptLoop()
	return pl
}

// Accept returns the next connection whose source address is settled.
func (l *proxyListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		return nil, l.err
	}
}

// Close stops accepting, cuts the connections still waiting for a header
// and waits for the goroutines reading them.
func (l *proxyListener) Close() error {
	err := l.Listener.Close()
	l.stop(net.ErrClosed)
	l.mu.Lock()
	for c := range l.pending {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
	return err
}

func (l *proxyListener) stop(err error) {
	l.closing.Do(func() {
		l.mu.Lock()
		l.err = err
		l.mu.Unlock()
		close(l.done)
	})
}

func (l *proxyListener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors and the like: wait a little,
				// as net/http does, rather than spin or stop serving.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-l.done:
					return
				}
			}
			l.stop(err)
			return
		}
		backoff = 0
		if !l.isTrusted(c.RemoteAddr()) {
			l.hand(&sniffConn{Conn: c, l: l})
			continue
		}
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			c.Close()
			return
		default:
		}
		l.pending[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.readHeader(c)
	}
}

// isTemporary reports the accept errors worth retrying (EMFILE, ENFILE,
// ECONNABORTED), which net.Error's deprecated Temporary still names.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// hand gives c to Accept, or closes it when the listener is closing.
func (l *proxyListener) hand(c net.Conn) {
	select {
	case l.ready <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *proxyListener) isTrusted(a net.Addr) bool {
	ip, ok := addrIP(a)
	if !ok {
		return false
	}
	for _, p := range *l.srv.proxyFrom.Load() {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func addrIP(a net.Addr) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// readHeader reads the PROXY header of a connection from a trusted
// network, and hands the connection on under the client's address.
func (l *proxyListener) readHeader(c net.Conn) {
	defer l.wg.Done()
	proxy := remoteHost(c)
	c.SetReadDeadline(time.Now().Add(l.timeout))
	// 256 bytes hold any v1 line (at most 107) and a v2 header without
	// large TLVs in one read; what follows the header (a pipelined EHLO, a
	// TLS ClientHello) stays in the buffer and is read first.
	br := bufio.NewReaderSize(c, 256)
	// proxyproto.Read takes an end of stream for "no header"; a first byte
	// read here tells a health check that sent none from a client that
	// sent something else.
	_, err := br.Peek(1)
	var h *proxyproto.Header
	if err == nil {
		h, err = proxyproto.Read(br)
	}
	c.SetReadDeadline(time.Time{})
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		l.refuse(c, proxy, err)
		return
	}
	pc := &proxiedConn{Conn: c, r: br, remote: c.RemoteAddr(), proxy: proxy}
	if _, isTCP := h.SourceAddr.(*net.TCPAddr); h.Command.IsProxy() && isTCP {
		// LOCAL (v2) and UNKNOWN (v1) are the balancer's own connections,
		// its health checks: they keep the balancer's address. So does a
		// v2 AF_UNIX source (a client of the balancer's UNIX socket):
		// its "address" is a path of up to 108 bytes that the client may
		// have chosen, not an IP address to count, log or write into the
		// Received header (a CRLF there would start a header line).
		pc.remote = h.SourceAddr
	}
	l.srv.log.Debug("PROXY protocol header read", "client_ip", remoteHost(pc), "proxy_ip", proxy, "proxy_version", int(h.Version))
	l.hand(pc)
}

// refuse closes a connection from a trusted network that did not open with
// a valid header. A balancer's TCP health check connects and closes (or
// resets) without a byte: that is not worth a warning.
func (l *proxyListener) refuse(c net.Conn, proxy string, err error) {
	c.Close()
	var ne net.Error
	reason, msg := "malformed", "malformed PROXY protocol header from a trusted address; connection closed"
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
		l.srv.log.Debug("connection from a trusted address closed before a PROXY protocol header", "proxy_ip", proxy)
		return
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		reason, msg = "missing", "PROXY protocol header missing from a trusted address (submission.proxy_protocol); connection closed"
	case errors.As(err, &ne) && ne.Timeout():
		reason, msg = "timeout", "no PROXY protocol header from a trusted address in time; connection closed"
	}
	l.srv.metrics.proxyRefused(reason)
	l.srv.log.Warn(msg, "proxy_ip", proxy, "reason", err.Error())
}

// proxiedConn is a connection from a load balancer, presenting the client
// the header named as its remote address.
type proxiedConn struct {
	net.Conn
	r      *bufio.Reader // what arrived after the header; nil once drained
	remote net.Addr
	proxy  string // the balancer's address, for the log
}

func (c *proxiedConn) RemoteAddr() net.Addr { return c.remote }

func (c *proxiedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p) // only what is buffered: never blocks
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

// errUntrustedProxyHeader ends a connection that sent a PROXY header from
// an address not in submission.proxy_protocol. It is net.ErrClosed too (the
// connection is closed by then), which go-smtp ends a session on quietly:
// the refusal is logged once, here, as a warning.
var errUntrustedProxyHeader = fmt.Errorf("PROXY protocol header from an untrusted address: %w", net.ErrClosed)

// sniffConn is a connection from an address that may not send a PROXY
// header. SMTP clients wait for the greeting and TLS clients open with a
// ClientHello (0x16), so a first read that starts with a PROXY signature is
// a balancer (or someone) trying to choose the client address: the
// connection is closed rather than read as commands. A header split across
// two reads is not recognised, but then it is only a bad command (587) or
// a failed handshake (465), which close the connection or answer 500.
type sniffConn struct {
	net.Conn
	l       *proxyListener
	checked bool // only the session's goroutine reads
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.checked || n == 0 {
		return n, err
	}
	c.checked = true
	if bytes.HasPrefix(p[:n], []byte("PROXY ")) || bytes.HasPrefix(p[:n], proxyproto.SIGV2) {
		c.Conn.Close()
		c.l.srv.metrics.proxyRefused("untrusted")
		c.l.srv.log.Warn("PROXY protocol header from an address not in submission.proxy_protocol; connection closed",
			"client_ip", remoteHost(c.Conn))
		return 0, errUntrustedProxyHeader
	}
	return n, err
}

// proxyUnder finds the balancer's address beneath the connection's layers
// ("" when the connection came directly).
func proxyUnder(c net.Conn) string {
	if cc := countedUnder(c); cc != nil {
		if pc, ok := cc.Conn.(*proxiedConn); ok {
			return pc.proxy
		}
	}
	return ""
}
