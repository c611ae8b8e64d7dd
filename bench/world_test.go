// Package bench holds load benchmarks that need Postern's internals: a
// delivery engine over a real queue (fsync and all), a signed lab DNS
// tree and lab MXes, all in process. See README.md, "Fairness and fan-out".
package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/postern/postern/internal/lab"
	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/delivery"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

var verbose = flag.Bool("fair.log", false, "log what delivery does, to stderr")

// TestMain fails the benchmarks if any goroutine outlives them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// zoneSpec is one recipient domain of the lab DNS: its own signed zone
// under "bench.".
type zoneSpec struct {
	domain  string // "name.bench"
	records string // zone-file lines
}

// startDNS serves a signed tree: the root, "bench." and one signed zone per
// spec, each delegated with its DS. It returns the server and the trust
// anchor (the root's DS).
func startDNS(b *testing.B, specs []zoneSpec) (*lab.DNS, []dns.RR) {
	b.Helper()
	root, err := lab.NewZone(".", dns.ECDSAP256SHA256, "")
	if err != nil {
		b.Fatal(err)
	}
	zones := []*lab.Zone{root}
	// The TLD is signed once with every delegation in it (Delegate would
	// sign it anew for each child).
	var tld strings.Builder
	for _, s := range specs {
		child, err := lab.NewZone(s.domain, dns.ECDSAP256SHA256, s.records)
		if err != nil {
			b.Fatal(err)
		}
		zones = append(zones, child)
		fmt.Fprintf(&tld, "%s. 3600 IN NS ns.%s.\n%s", s.domain, s.domain, child.Anchor())
	}
	bench, err := lab.NewZone("bench.", dns.ECDSAP256SHA256, tld.String())
	if err != nil {
		b.Fatal(err)
	}
	if err := root.Delegate(bench); err != nil {
		b.Fatal(err)
	}
	zones = append(zones, bench)
	server, err := lab.StartDNS(zones...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(server.Close)
	return server, root.DS()
}

// mxZone is a domain whose MX is at addr, with a DANE-EE TLSA record for
// the lab MX's key when spki is set.
func mxZone(domain, addr string, port int, spki string) zoneSpec {
	r := fmt.Sprintf("%[1]s. 300 IN MX 10 mx.%[1]s.\nmx.%[1]s. 300 IN A %[2]s\n", domain, addr)
	if spki != "" {
		r += fmt.Sprintf("_%d._tcp.mx.%s. 300 IN TLSA 3 1 1 %s\n", port, domain, spki)
	}
	return zoneSpec{domain: domain, records: r}
}

func startMX(b *testing.B) (*lab.MX, string) {
	b.Helper()
	mx, err := lab.StartMX(nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(mx.Close)
	sum := sha256.Sum256(mx.Leaf.RawSubjectPublicKeyInfo)
	return mx, hex.EncodeToString(sum[:])
}

// relay is a delivery engine as the daemon builds it: a real queue (every
// commit fsynced), a validating resolver from the lab root, the TLS policy
// engine (DANE, MTA-STS, default may), and the default delivery settings.
type relay struct {
	q      *countingQueue
	engine *delivery.Engine
	run    func() // starts the workers
	stop   func() // stops them (and waits)
}

func startRelay(b *testing.B, dnsServer *lab.DNS, anchors []dns.RR, port int, tune func(*delivery.Config)) *relay {
	b.Helper()
	dir := b.TempDir()
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	res, err := resolver.New([]string{dnsServer.Addr}, resolver.Options{Anchors: anchors})
	if err != nil {
		b.Fatal(err)
	}
	state, err := bbolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { state.Close() })
	policy, err := tlspolicy.NewEngine(tlspolicy.Config{Default: tlspolicy.ModeMay}, tlspolicy.Deps{Resolver: res, DB: state})
	if err != nil {
		b.Fatal(err)
	}
	cfg := delivery.Config{Hostname: "relay.bench", Port: port, Workers: 32, LeaseTime: 30 * time.Minute,
		Retry: []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute}, MaxQueueLifetime: 120 * time.Hour,
		DelayWarning: 4 * time.Hour, MaxAddrAttempts: 5, PollInterval: 5 * time.Second, ReuseCount: 100,
		ReuseIdle: 10 * time.Second, MaxConnectionsPerDomain: 20, DrainTimeout: time.Second}
	configure(&cfg) // the settings this branch adds, where it has them
	if tune != nil {
		tune(&cfg)
	}
	cq := &countingQueue{Queue: q, delivered: map[string]time.Time{}}
	var log *slog.Logger
	if *verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r := &relay{q: cq, engine: delivery.New(cfg, delivery.Deps{Queue: cq, Resolver: res, Policy: policy, Log: log})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var started, stopped sync.Once
	r.run = func() { started.Do(func() { go func() { r.engine.Run(ctx); close(done) }() }) }
	r.stop = func() {
		stopped.Do(func() {
			cancel()
			started.Do(func() { close(done) }) // never started
			<-done
		})
	}
	b.Cleanup(r.stop)
	return r
}

// countingQueue counts the queue transactions delivery makes, and notes
// when each message's recipients were recorded delivered.
type countingQueue struct {
	*queue.Queue
	leaseCalls, leases, records, postponing atomic.Int64

	mu        sync.Mutex
	delivered map[string]time.Time // queue ID → when its last delivery was recorded
}

func (c *countingQueue) Lease(max int, hold time.Duration) ([]queue.Lease, error) {
	l, err := c.Queue.Lease(max, hold)
	c.leaseCalls.Add(1)
	c.leases.Add(int64(len(l)))
	return l, err
}

func (c *countingQueue) Record(id string, seq uint64, outcomes []queue.Outcome, quiet ...func(queue.Message) bool) (queue.Message, error) {
	m, err := c.Queue.Record(id, seq, outcomes, quiet...)
	c.records.Add(1)
	now := time.Now()
	for _, o := range outcomes {
		switch o.Result {
		case queue.ResultPostponed:
			c.postponing.Add(1)
		case queue.ResultDelivered:
			c.mu.Lock()
			c.delivered[id] = now
			c.mu.Unlock()
		}
	}
	return m, err
}

func (c *countingQueue) deliveredAt(id string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.delivered[id]
	return t, ok
}

func (c *countingQueue) deliveredCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.delivered)
}

// body2k is a 2 KB message in lines of 78 characters.
var body2k = "From: load@sender.bench\r\nSubject: load\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 26)

// enqueue queues one message from the bench's sender.
func enqueue(b *testing.B, q *countingQueue, rcpts ...string) string {
	env := queue.Envelope{From: "load@sender.bench"}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, queue.Recipient{Addr: r})
	}
	id, err := q.Enqueue("", env, strings.NewReader(body2k))
	if err != nil {
		b.Error(err)
	}
	return id
}

// enqueueMany queues n messages, 16 at a time (their commits share fsyncs).
func enqueueMany(b *testing.B, q *countingQueue, n int, rcpt func(i int) string) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				enqueue(b, q, rcpt(i))
			}
		}()
	}
	wg.Wait()
}

// tarpit is an SMTP server that accepts every connection and answers the
// greeting and every command after delay, offering no extension: the
// slowest server that still takes mail. It counts the connections it holds.
type tarpit struct {
	delay    time.Duration
	l        net.Listener
	open     atomic.Int32
	maxOpen  atomic.Int32
	accepted atomic.Int32
	messages atomic.Int32
	quit     chan struct{}
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startTarpit(b *testing.B, addr string, delay time.Duration) *tarpit {
	b.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		b.Skipf("tarpit on %s: %v", addr, err)
	}
	t := &tarpit{delay: delay, l: l, quit: make(chan struct{}), conns: map[net.Conn]bool{}}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.accepted.Add(1)
			n := t.open.Add(1)
			for m := t.maxOpen.Load(); n > m && !t.maxOpen.CompareAndSwap(m, n); m = t.maxOpen.Load() {
			}
			t.mu.Lock()
			t.conns[c] = true
			t.mu.Unlock()
			t.wg.Add(1)
			go func() { defer t.wg.Done(); t.serve(c) }()
		}
	}()
	b.Cleanup(t.close)
	return t
}

func (t *tarpit) close() {
	select {
	case <-t.quit:
		return
	default:
	}
	close(t.quit)
	t.l.Close()
	t.mu.Lock()
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// reply answers after the delay; false when the tarpit is closing.
func (t *tarpit) reply(c net.Conn, text string) bool {
	timer := time.NewTimer(t.delay)
	defer timer.Stop()
	select {
	case <-t.quit:
		return false
	case <-timer.C:
	}
	_, err := c.Write([]byte(text))
	return err == nil
}

func (t *tarpit) serve(c net.Conn) {
	defer func() {
		c.Close()
		t.open.Add(-1)
		t.mu.Lock()
		delete(t.conns, c)
		t.mu.Unlock()
	}()
	if !t.reply(c, "220 tarpit.bench ESMTP\r\n") {
		return
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		answer := "250 ok\r\n"
		switch verb {
		case "EHLO", "HELO":
			answer = "250 tarpit.bench\r\n"
		case "DATA":
			if !t.reply(c, "354 go on\r\n") {
				return
			}
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			t.messages.Add(1)
		case "QUIT":
			t.reply(c, "221 bye\r\n")
			return
		}
		if !t.reply(c, answer) {
			return
		}
	}
}

// quantile returns the q-quantile of sorted durations.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(q*float64(len(sorted))), len(sorted)-1)]
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(deadline time.Duration, cond func() bool) bool {
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
