package bench

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/delivery"
)

var (
	tarpitDelay   = flag.Duration("fair.delay", 2*time.Second, "tarpit: how long the tarpit MX waits before each reply")
	tarpitBacklog = flag.Int("fair.backlog", 2000, "tarpit: messages queued for the tarpit domain")
	healthyRate   = flag.Int("fair.rate", 200, "tarpit: messages per second to the healthy domains")
	runFor        = flag.Duration("fair.duration", 30*time.Second, "tarpit: how long the healthy load runs")
	fanRcpts      = flag.Int("fair.rcpts", 1000, "fan-out: recipients of the one message")
	fanRcptMax    = flag.Int("fair.rcptmax", 0, "fan-out: the MX's RCPT limit per transaction (LIMITS RCPTMAX; 0: none)")
	coldDomains   = flag.Int("fair.domains", 10000, "cold domains: distinct recipient domains")
)

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// BenchmarkTarpit: a backlog for a tarpit domain (its MX answers every
// command after fair.delay) while a steady load goes to ten healthy
// domains. It reports the healthy mail's time in queue (enqueue to the
// delivery recorded), the most connections the tarpit held at once, and
// the queue transactions the engine made per second (the postponements of
// tarpit mail among them).
//
//	go test ./bench -run XXX -bench Tarpit -benchtime 1x -timeout 30m -args -fair.delay 20s -fair.duration 60s
func BenchmarkTarpit(b *testing.B) {
	mx, spki := startMX(b)
	tp := startTarpit(b, net.JoinHostPort("127.0.0.2", strconv.Itoa(mx.Port)), *tarpitDelay)
	specs := []zoneSpec{mxZone("tarpit.bench", "127.0.0.2", mx.Port, "")}
	for i := range 10 {
		specs = append(specs, mxZone(fmt.Sprintf("h%d.bench", i), "127.0.0.1", mx.Port, spki))
	}
	dnsServer, anchors := startDNS(b, specs)
	r := startRelay(b, dnsServer, anchors, mx.Port, nil)
	enqueueMany(b, r.q, *tarpitBacklog, func(i int) string { return fmt.Sprintf("t%d@tarpit.bench", i) })
	b.ResetTimer()
	r.run()

	type sent struct {
		id string
		at time.Time
	}
	var mu sync.Mutex
	var healthy []sent
	var wg sync.WaitGroup
	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(*healthyRate))
	for i := 0; time.Since(start) < *runFor; i++ {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			at := time.Now()
			id := enqueue(b, r.q, fmt.Sprintf("u%d@h%d.bench", i, i%10))
			r.engine.Kick() // as a submission does
			mu.Lock()
			healthy = append(healthy, sent{id, at})
			mu.Unlock()
		}()
	}
	tick.Stop()
	wg.Wait()
	window := time.Since(start).Seconds()
	leaseCalls, leases, records, postponed := r.q.leaseCalls.Load(), r.q.leases.Load(), r.q.records.Load(), r.q.postponing.Load()
	load := loadAverage()
	// The last healthy messages get their chance to finish.
	waitFor(30*time.Second, func() bool {
		for _, s := range healthy {
			if _, ok := r.q.deliveredAt(s.id); !ok {
				return false
			}
		}
		return true
	})
	var waits []time.Duration
	for _, s := range healthy {
		if t, ok := r.q.deliveredAt(s.id); ok {
			waits = append(waits, t.Sub(s.at))
		}
	}
	slices.Sort(waits)
	r.stop()
	tp.close()
	b.StopTimer()
	b.ReportMetric(float64(quantile(waits, 0.5).Microseconds())/1000, "healthy_p50_ms")
	b.ReportMetric(float64(quantile(waits, 0.99).Microseconds())/1000, "healthy_p99_ms")
	b.ReportMetric(float64(len(healthy)-len(waits)), "healthy_undelivered")
	b.ReportMetric(float64(tp.maxOpen.Load()), "tarpit_max_conns")
	b.ReportMetric(float64(leaseCalls)/window, "lease_tx/s")
	b.ReportMetric(float64(records)/window, "record_tx/s")
	b.ReportMetric(float64(postponed)/window, "postponed/s")
	b.Logf("load average %s; tarpit delay %v, backlog %d; healthy %d msg/s for %.0fs: %d sent, %d delivered, p50 %v p99 %v max %v; "+
		"tarpit held at most %d connections (%d accepted, %d messages taken); queue: %d lease transactions (%d leases), %d records, %d postponements",
		load, *tarpitDelay, *tarpitBacklog, *healthyRate, window, len(healthy), len(waits), quantile(waits, 0.5), quantile(waits, 0.99),
		quantile(waits, 1), tp.maxOpen.Load(), tp.accepted.Load(), tp.messages.Load(), leaseCalls, leases, records, postponed)
}

// BenchmarkFanOut: one message to fair.rcpts recipients at one domain. It
// reports the time until every recipient is delivered, the connections
// used and the recipients per transaction the MX saw. A temporary refusal
// is retried after a second (the bench's own retry interval).
//
//	go test ./bench -run XXX -bench FanOut -benchtime 1x -args -fair.rcptmax 100
func BenchmarkFanOut(b *testing.B) {
	mx, spki := startMX(b)
	mx.Server.MaxRecipients = *fanRcptMax
	dnsServer, anchors := startDNS(b, []zoneSpec{mxZone("fan.bench", "127.0.0.1", mx.Port, spki)})
	r := startRelay(b, dnsServer, anchors, mx.Port, func(c *delivery.Config) { c.Retry = []time.Duration{time.Second} })
	rcpts := make([]string, *fanRcpts)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("r%d@fan.bench", i)
	}
	b.ResetTimer()
	start := time.Now()
	id := enqueue(b, r.q, rcpts...)
	r.run()
	done := waitFor(10*time.Minute, func() bool {
		_, err := r.q.Get(id)
		return errors.Is(err, queue.ErrNotFound)
	})
	elapsed := time.Since(start)
	b.StopTimer()
	r.stop()
	var per []int
	got := 0
	for _, m := range mx.Received() {
		per = append(per, len(m.Rcpts))
		got += len(m.Rcpts)
	}
	b.ReportMetric(elapsed.Seconds(), "s_total")
	b.ReportMetric(float64(mx.Connections()), "connections")
	b.ReportMetric(float64(len(per)), "transactions")
	b.Logf("load average %s; %d recipients, RCPT limit %d: finished %v after %v; %d delivered in %d transactions over %d connections; RCPTs per transaction %v",
		loadAverage(), *fanRcpts, *fanRcptMax, done, elapsed, got, len(per), mx.Connections(), per)
}

// BenchmarkColdDomains: fair.domains messages, each to its own domain whose
// signed zone the resolver has never seen: a validated MX, address and
// TLSA lookup each (DANE-EE), then a TLS delivery. It reports messages per
// second and the questions the lab DNS server answered per message.
//
//	go test ./bench -run XXX -bench ColdDomains -benchtime 1x -timeout 30m
func BenchmarkColdDomains(b *testing.B) {
	mx, spki := startMX(b)
	specs := make([]zoneSpec, *coldDomains)
	for i := range specs {
		specs[i] = mxZone(fmt.Sprintf("d%05d.bench", i), "127.0.0.1", mx.Port, spki)
	}
	built := time.Now()
	dnsServer, anchors := startDNS(b, specs)
	b.Logf("%d signed zones built in %v", len(specs), time.Since(built))
	r := startRelay(b, dnsServer, anchors, mx.Port, nil)
	enqueueMany(b, r.q, len(specs), func(i int) string { return fmt.Sprintf("u@d%05d.bench", i) })
	asked := dnsServer.Queries()
	b.ResetTimer()
	start := time.Now()
	r.run()
	done := waitFor(30*time.Minute, func() bool { return r.q.deliveredCount() == len(specs) })
	elapsed := time.Since(start)
	b.StopTimer()
	load := loadAverage()
	r.stop()
	queries := dnsServer.Queries() - asked
	byType := map[string]int{}
	for _, q := range dnsServer.Asked()[asked:] {
		byType[dns.TypeToString[q.Qtype]]++
	}
	verified := 0
	for _, m := range mx.Received() {
		if m.TLS {
			verified++
		}
	}
	b.ReportMetric(float64(r.q.deliveredCount())/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(queries)/float64(len(specs)), "dns_queries/msg")
	b.Logf("load average %s; %d domains: all delivered %v, %d in %v (%.0f msg/s, %d over TLS); %d DNS questions (%.2f per message; by type %v)",
		load, len(specs), done, r.q.deliveredCount(), elapsed, float64(r.q.deliveredCount())/elapsed.Seconds(), verified, queries,
		float64(queries)/float64(len(specs)), byType)
}
