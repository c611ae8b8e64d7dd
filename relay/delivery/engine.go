// Package delivery takes due recipients from the queue and hands them to
// their domains' mail servers, or to a configured next hop, recording every
// outcome: delivered, deferred with backoff, or failed and reported to the
// sender in a delivery status notification.
//
// engine.go runs the workers: lease due recipients, keep the lease while
// an attempt runs, record the outcomes, drain at shutdown. destinations.go
// decides whether an attempt at a domain may start (its concurrency window,
// dead-destination detection); postpone.go gives back the recipients of a
// domain that is busy or dead without holding a worker. attempt.go is one
// attempt at one domain's recipients, a value whose methods follow the
// protocol (route, policy, connect, authenticate, transact, record).
// notices.go builds the notices to senders: bounces, delay warnings and
// relayed reports. route.go finds where mail goes, session.go speaks SMTP
// on one connection, and pool.go keeps sessions for the next message.
package delivery

import (
	"container/heap"
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/resolver"
	"github.com/postern/postern/tlspolicy"
)

// Config is the delivery settings, already validated.
type Config struct {
	Hostname         string
	Port             int // 25 in production; tests and labs point it elsewhere
	Routes           []Route
	Workers          int
	LeaseTime        time.Duration // renewed while an attempt runs (see holdLease)
	Retry            []time.Duration
	MaxQueueLifetime time.Duration
	DelayWarning     time.Duration
	MaxAddrAttempts  int
	PreferIPv6       bool
	Timeouts         Timeouts
	PollInterval     time.Duration
	// Connection reuse: a session serves up to ReuseCount transactions and
	// waits up to ReuseIdle between them.
	ReuseCount int
	ReuseIdle  time.Duration
	// Per-destination concurrency (see destinations): a recipient domain
	// starts with InitialConnectionsPerDomain attempts at once (0: the
	// maximum), gains one with each completed transaction and loses one
	// with each attempt that got no session, between 1 and
	// MaxConnectionsPerDomain (0: no limit). An attempt that finds its
	// domain's window full is postponed, never waited for.
	InitialConnectionsPerDomain int
	MaxConnectionsPerDomain     int
	// After DeadDestinationFailures attempts in a row at a domain got no
	// session (0: never), the domain is marked dead: its mail is deferred
	// (4.4.1) without connecting for DeadDestinationCooldown (0: five
	// minutes), then one probe attempt is let through.
	DeadDestinationFailures int
	DeadDestinationCooldown time.Duration
	// DrainTimeout is how long attempts in flight may go on after Run's
	// context ends.
	DrainTimeout time.Duration
	// Sources are the local addresses connections leave from (each MX
	// address from a source of its family), with their EHLO names; empty
	// lets the kernel choose. A route may pin its own (Route.Source).
	Sources []Source
}

// Queue is what delivery needs of the queue.
type Queue interface {
	Due(max int) (int, error)
	Lease(max int, hold time.Duration) ([]queue.Lease, error)
	Renew(id string, seq uint64, hold time.Duration) (time.Time, error)
	Record(id string, seq uint64, outcomes []queue.Outcome, quiet ...func(queue.Message) bool) (queue.Message, error)
	Retire(id string, seq uint64, notices ...queue.Draft) error
	Body(id string) (io.ReadCloser, error)
	Enqueue(id string, env queue.Envelope, body io.Reader) (string, error)
}

// Deps are the services delivery uses.
type Deps struct {
	Queue    Queue
	Resolver resolver.Resolver
	Log      *slog.Logger     // nil: logs nothing
	Clock    func() time.Time // nil: time.Now
	Dialer   *net.Dialer
	// Policy decides how strong each connection's TLS must be; the
	// default is opportunistic (tlspolicy.May) everywhere.
	Policy tlspolicy.Policy
	// Roots verify the certificates of routes at level verify; nil means
	// the system roots.
	Roots *x509.CertPool
	// Jitter spreads retries; nil means ±10% random.
	Jitter func(time.Duration) time.Duration
	// Shuffle orders MX hosts of equal preference; nil means random.
	Shuffle func([]resolver.MX)
}

// Engine runs delivery workers.
type Engine struct {
	cfg     Config
	d       Deps
	kick    chan struct{}
	conns   *pool
	dests   *destinations
	metrics instruments
	routes  atomic.Pointer[[]Route] // Config.Routes, replaced by SetRoutes
	// renewCheck is how often (real time) an attempt's lease is looked at;
	// it is renewed once half of it is spent by the clock.
	renewCheck time.Duration
	workers    workers // Run's workers, shared with hand-overs (handoff.go)

	// wakes are when postponed recipients fall due (a min-heap): Run
	// looks for work then rather than at its next poll.
	wakeMu sync.Mutex
	wakes  wakeHeap
}

// SetRoutes replaces the routes (a configuration reload); deliveries that
// start from now on use them.
func (e *Engine) SetRoutes(routes []Route) { e.routes.Store(&routes) }

// New builds an engine.
func New(cfg Config, d Deps) *Engine {
	if d.Clock == nil {
		d.Clock = time.Now
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Dialer == nil {
		d.Dialer = &net.Dialer{}
	}
	if d.Policy == nil {
		d.Policy = tlspolicy.Fixed{Level: tlspolicy.May}
	}
	if d.Jitter == nil {
		d.Jitter = func(t time.Duration) time.Duration { return t + time.Duration((rand.Float64()-0.5)*0.2*float64(t)) }
	}
	if d.Shuffle == nil {
		d.Shuffle = randomShuffle
	}
	if cfg.Timeouts == (Timeouts{}) {
		cfg.Timeouts = DefaultTimeouts
	}
	e := &Engine{cfg: cfg, d: d, kick: make(chan struct{}, 1),
		conns: newPool(cfg.ReuseCount, cfg.ReuseIdle, d.Clock), metrics: newInstruments(),
		renewCheck: max(min(time.Second, cfg.LeaseTime/8), time.Millisecond)}
	e.dests = newDestinations(cfg, d.Clock, d.Jitter, d.Log, &e.metrics)
	e.SetRoutes(cfg.Routes)
	return e
}

// Kick makes the engine look for due work now, as after a submission.
func (e *Engine) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// wakeUp asks Run to look for due work at t (a postponed recipient's new
// due time), sooner than its poll interval would.
func (e *Engine) wakeUp(t time.Time) {
	e.wakeMu.Lock()
	sooner := len(e.wakes) == 0 || t.Before(e.wakes[0])
	heap.Push(&e.wakes, t)
	e.wakeMu.Unlock()
	if sooner {
		e.Kick() // Run sets its timer anew
	}
}

// nextWake returns how long until the earliest wake-up asked for, and
// whether there is one; those that are due are forgotten as they are
// returned.
func (e *Engine) nextWake() (time.Duration, bool) {
	e.wakeMu.Lock()
	defer e.wakeMu.Unlock()
	now := e.d.Clock()
	due := false
	for len(e.wakes) > 0 && !e.wakes[0].After(now) {
		heap.Pop(&e.wakes)
		due = true
	}
	switch {
	case due:
		return 0, true
	case len(e.wakes) == 0:
		return 0, false
	}
	return e.wakes[0].Sub(now), true
}

// wakeHeap is a min-heap of times (container/heap).
type wakeHeap []time.Time

func (h wakeHeap) Len() int           { return len(h) }
func (h wakeHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h wakeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *wakeHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *wakeHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// Run delivers until ctx ends, then drains: it takes no more work and
// lets attempts in flight finish for up to Config.DrainTimeout. Attempts
// still running then are cut off, and their recipients given back to the
// queue unattempted, due at once; nothing is recorded as tried that was not.
func (e *Engine) Run(ctx context.Context) {
	work, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	defer e.conns.closeAll()
	// The worker slots are shared with hand-overs (handoff.go), which
	// stop before the drain waits.
	e.openWorkers(work)
	sem, wg := e.workers.slots, &e.workers.wg
	defer e.drain(wg, abort)
	defer e.closeWorkers()
	ticker := time.NewTicker(e.cfg.PollInterval)
	defer ticker.Stop()
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()
	for {
		// The workers for a lease are taken before it, not counted: a
		// hand-over may take one at any moment, and a lease with no
		// worker to run it would wait, unrenewed and deaf to shutdown,
		// until some attempt ended. Only as many are taken as there is
		// work due: workers set aside for nothing would refuse the
		// hand-overs of fresh mail meanwhile (which the scheduler must
		// then lease, a transaction more each).
		free := 0
		if idle := cap(sem) - len(sem); idle > 0 && ctx.Err() == nil {
			due, err := e.d.Queue.Due(idle)
			if err != nil {
				e.d.Log.Error("looking for due work in the queue failed", "err", err)
			}
			for free < due && tryAcquire(sem) {
				free++
			}
		}
		var leases []queue.Lease
		if free > 0 {
			var err error
			leases, err = e.d.Queue.Lease(free, e.cfg.LeaseTime)
			if err != nil {
				e.d.Log.Error("lease from queue failed", "err", err)
			}
		}
		for _, l := range leases {
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done(); e.Kick() }()
				e.process(work, l)
			}()
		}
		for range free - len(leases) {
			<-sem // a worker taken and not needed
		}
		if len(leases) > 0 && len(leases) == free {
			continue // more may be due
		}
		var woken <-chan time.Time
		if d, ok := e.nextWake(); ok {
			wake.Reset(d)
			woken = wake.C
		}
		select {
		case <-ctx.Done():
			return
		case <-e.kick:
		case <-woken:
		case <-ticker.C:
			e.conns.reap()
			e.dests.reap()
		}
	}
}

// tryAcquire takes a worker slot if one is free, without waiting.
func tryAcquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// drain waits for the workers, cutting them off at the drain deadline.
func (e *Engine) drain(wg *sync.WaitGroup, abort context.CancelFunc) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	timer := time.NewTimer(e.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	e.d.Log.Warn("delivery drain deadline reached: cutting off attempts in flight; their recipients stay queued", "deadline", e.cfg.DrainTimeout)
	abort()
	<-done
}

// RunDue processes everything due now, one lease at a time, and returns
// how many leases it handled. Tests use it with a fake clock.
func (e *Engine) RunDue(ctx context.Context) int {
	n := 0
	for {
		leases, err := e.d.Queue.Lease(1, e.cfg.LeaseTime)
		if err != nil || len(leases) == 0 {
			return n
		}
		e.process(ctx, leases[0])
		n++
	}
}

func (e *Engine) process(ctx context.Context, l queue.Lease) {
	m := l.Message
	if l.Retire {
		e.retire(m, l.Seq)
		return
	}
	ctx, span := e.metrics.tracer.Start(ctx, "delivery", trace.WithAttributes(attribute.String("postern.queue_id", m.ID),
		attribute.Int("postern.recipients", len(l.Recipients))))
	defer span.End()
	ctx, release := e.holdLease(ctx, l)
	defer release()
	byDomain := map[string][]int{}
	var order []string
	for _, i := range l.Recipients {
		d := queue.Domain(m.Recipients[i].Addr)
		if byDomain[d] == nil {
			order = append(order, d)
		}
		byDomain[d] = append(byDomain[d], i)
	}
	var outcomes []queue.Outcome
	for _, domain := range order {
		if ctx.Err() != nil {
			outcomes = append(outcomes, returned(byDomain[domain])...)
			continue
		}
		out := e.deliverDomain(ctx, m, domain, byDomain[domain])
		if ctx.Err() != nil {
			// Cut off by shutdown: a deferral now says nothing about the
			// destination, so the recipient goes back untried. What was
			// delivered or refused stands.
			for i := range out {
				if out[i].Result == queue.ResultDeferred {
					out[i] = queue.Outcome{Recipient: out[i].Recipient, Result: queue.ResultReturned}
				}
			}
		}
		outcomes = append(outcomes, out...)
	}
	warned := e.maybeWarnDelay(m, outcomes)
	release() // the attempt is over; Record settles the lease
	after, err := e.d.Queue.Record(m.ID, l.Seq, outcomes, e.quiet)
	if err == nil && warned {
		e.metrics.notice("delay")
	}
	switch {
	case errors.Is(err, queue.ErrLeaseLost):
		// Deliveries made and their evidence were kept all the same; what
		// else this attempt learnt is the new holder's to find out.
		e.d.Log.Warn("lease lost before the outcomes were recorded; deliveries and their evidence kept", "queue_id", m.ID, "err", err)
		if after.RetireSeq == 0 {
			return
		}
	case err != nil:
		e.d.Log.Error("recording delivery outcomes failed", "queue_id", m.ID, "err", err)
		return
	}
	if after.Done() && after.RetireSeq == 0 {
		e.d.Log.Info("message finished", "queue_id", m.ID, "notices", 0)
	} else if after.Done() {
		e.retire(after, after.RetireSeq)
	}
}

// holdLease renews l while its attempt runs. One attempt may rightly take
// longer than any lease: RFC 5321 4.5.3.2 allows five minutes per command,
// three per data block and ten for the final dot, for every address and
// every domain of the lease. A lease that ran out would hand the recipients
// to a second worker, which would deliver them again. So the lease is
// renewed once half of it is spent; and should it be lost all the same (or
// not renewed before it ends), the attempt is cut off, since another worker
// may now hold its recipients. release stops the renewals; it may be called
// more than once.
func (e *Engine) holdLease(ctx context.Context, l queue.Lease) (context.Context, func()) {
	ctx, cutOff := context.WithCancel(ctx)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(e.renewCheck)
		defer tick.Stop()
		// The queue's deadlines are wall-clock times (stored, and compared
		// by UnixNano), so the time left is judged by the wall clock
		// alone: Round(0) drops the monotonic reading, which would
		// otherwise hide a step of the wall clock (NTP, a resumed VM)
		// that makes the queue hand the recipients out again.
		until := l.Until.Round(0)
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			now := e.d.Clock().Round(0)
			if until.Sub(now) > e.cfg.LeaseTime/2 {
				continue
			}
			next, err := e.d.Queue.Renew(l.Message.ID, l.Seq, e.cfg.LeaseTime)
			if err == nil {
				until = next.Round(0)
				continue
			}
			if errors.Is(err, queue.ErrLeaseLost) || errors.Is(err, queue.ErrNotFound) || !now.Before(until) {
				e.d.Log.Error("delivery lease lost: cutting the attempt off", "queue_id", l.Message.ID, "err", err)
				cutOff()
				return
			}
			e.d.Log.Warn("renewing a delivery lease failed; trying again", "queue_id", l.Message.ID, "until", until, "err", err)
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() { close(stop); <-stopped; cutOff() })
	}
}

func returned(idxs []int) []queue.Outcome {
	out := make([]queue.Outcome, len(idxs))
	for i, idx := range idxs {
		out[i] = queue.Outcome{Recipient: idx, Result: queue.ResultReturned}
	}
	return out
}

// backoff is how long a recipient waits after its attempts-th deferral.
func (e *Engine) backoff(attempts int) time.Duration {
	if len(e.cfg.Retry) == 0 {
		return time.Hour
	}
	return e.d.Jitter(e.cfg.Retry[min(attempts, len(e.cfg.Retry)-1)])
}
