package main

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// serverLimits bound what one client of an admin listener can hold: its
// connections share the process's file descriptors with the SMTP
// listeners.
type serverLimits struct {
	ReadHeader time.Duration // to read a request's headers
	Read       time.Duration // to read a whole request, body included
	Write      time.Duration // from the end of the headers to the end of the response
	Idle       time.Duration // a kept-alive connection waiting for its next request
	MaxConns   int           // connections open at once; more wait to be accepted (a TCP peer holds a quarter at most)
}

var (
	// webLimits: the admin HTTP listener serves scrapes, health checks and
	// the status page, none of which needs a body or long.
	webLimits = serverLimits{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: time.Minute,
		Idle: 30 * time.Second, MaxConns: 64}
	// socketLimits: the admin socket; handlers that take longer (a backup,
	// sending TLS reports) extend their own write deadline.
	socketLimits = serverLimits{ReadHeader: 10 * time.Second, Read: 30 * time.Second, Write: 2 * time.Minute,
		Idle: 10 * time.Second, MaxConns: 16}
)

// maxRequestBody bounds every request body on both admin listeners; the
// largest legitimate one is a user with its sender patterns.
const maxRequestBody = 64 << 10

func newLimitedServer(h http.Handler, lim serverLimits) *http.Server {
	return &http.Server{
		Handler:           boundBodies(h),
		ReadHeaderTimeout: lim.ReadHeader,
		ReadTimeout:       lim.Read,
		WriteTimeout:      lim.Write,
		IdleTimeout:       lim.Idle,
		MaxHeaderBytes:    16 << 10,
	}
}

// boundBodies makes reading past maxRequestBody an error
// (*http.MaxBytesError), and has the server close the connection.
func boundBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
		h.ServeHTTP(w, r)
	})
}

// limitListener accepts at most n connections at once: Accept waits for
// one to close, leaving the others in the kernel's backlog. A TCP peer
// (an IP address) may hold a quarter of them at most, and a connection
// past that is closed at once: otherwise a single client that can reach
// the port could hold every slot with connections that send nothing,
// reopening each as it times out, and the health checks of the load
// balancer would wait behind them in the backlog.
type limitListener struct {
	net.Listener
	slots   chan struct{}
	done    chan struct{}
	once    sync.Once
	perPeer int
	mu      sync.Mutex
	peers   map[string]int // connections held, by TCP peer address
}

func newLimitListener(l net.Listener, n int) net.Listener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n), done: make(chan struct{}),
		perPeer: max(1, n/4), peers: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		// A Unix socket's peers have no address to tell them apart (and
		// only the service user and root can connect to it).
		tcp, ok := c.RemoteAddr().(*net.TCPAddr)
		if !ok {
			return &limitedConn{Conn: c, release: func() { <-l.slots }}, nil
		}
		peer := tcp.IP.String()
		l.mu.Lock()
		if l.peers[peer] >= l.perPeer {
			l.mu.Unlock()
			c.Close()
			<-l.slots
			continue
		}
		l.peers[peer]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, release: func() {
			l.mu.Lock()
			if l.peers[peer]--; l.peers[peer] == 0 {
				delete(l.peers, peer)
			}
			l.mu.Unlock()
			<-l.slots
		}}, nil
	}
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
