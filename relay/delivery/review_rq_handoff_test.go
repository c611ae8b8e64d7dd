package delivery

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
)

// racingQueue is the queue with a submission that takes a free worker
// for a hand-over while the scheduler's first Lease runs (between Run
// counting its free workers and starting them).
type racingQueue struct {
	Queue
	engine *Engine
	once   sync.Once
	mu     sync.Mutex
	slot   *Slot
}

func (r *racingQueue) reserved() *Slot { r.mu.Lock(); defer r.mu.Unlock(); return r.slot }

func (r *racingQueue) Lease(max int, hold time.Duration) ([]queue.Lease, error) {
	r.once.Do(func() {
		if s, ok := r.engine.Reserve(); ok {
			r.mu.Lock()
			r.slot = s // its commit is slow: the slot stays reserved
			r.mu.Unlock()
		}
	})
	return r.Queue.Lease(max, hold)
}

// The scheduler never holds a lease that no worker runs: a hand-over that
// takes the last free worker while the scheduler leases left Run waiting
// for a worker with the lease in hand, unrenewed, its message undelivered,
// and Run deaf to shutdown until some attempt (or the hand-over) ended.
func TestHandOverRacingTheSchedulerLeavesNoLeaseWaiting(t *testing.T) {
	mx := smtptest.Start(t, nil)
	w := newWorld(t, mx)
	w.engine.cfg.Workers = 1
	rq := &racingQueue{Queue: w.q, engine: w.engine}
	w.engine.d.Queue = rq
	w.submit(sender, "a@dest.test")

	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { w.engine.Run(ctx); close(stopped) }()
	defer func() {
		cancel()
		if s := rq.reserved(); s != nil {
			s.Cancel() // the hand-over's commit failed, at last
		}
		<-stopped
	}()
	if !eventually(func() bool { return len(mx.Received()) == 1 }) {
		t.Fatalf("the leased message was not delivered while a hand-over held the only worker (hand-over took a slot: %v)", rq.reserved() != nil)
	}
}

// Submissions racing each other, the scheduler and a shutdown: each
// message, handed over or queued for the scheduler, reaches the MX once,
// and the engine never runs more attempts than it has workers. The engine
// is stopped half way and started again, as a restart without a crash
// would (hand-overs in flight then go back to the queue untried).
func TestHandOversUnderLoadDeliverEachMessageOnce(t *testing.T) {
	var mu sync.Mutex
	inFlight, most := 0, 0
	mx := smtptest.Start(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(string) error {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			mu.Lock()
			inFlight--
			mu.Unlock()
			return nil
		}
	})
	w := newWorld(t, mx) // two workers
	// The restart lets attempts in flight finish. Cut off (the world's
	// drain is none), an attempt stopped after its final dot and before
	// the server's reply is delivered again after the restart, as in any
	// MTA (RFC 1047): that duplicate is not the one this test looks for.
	w.engine.cfg.DrainTimeout = 10 * time.Second
	const submitters, each = 4, 10
	start := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan struct{})
		go func() { w.engine.Run(ctx); close(stopped) }()
		return func() { cancel(); <-stopped }
	}
	stop := start()
	var wg sync.WaitGroup
	half := make(chan struct{})
	for s := 0; s < submitters; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if s == 0 && i == each/2 {
					close(half)
				}
				_, slot, l := w.submitLeased(fmt.Sprintf("r%d-%d@dest.test", s, i))
				if slot != nil {
					slot.Deliver(*l)
				}
				w.engine.Kick()
			}
		}()
	}
	<-half
	stop()
	stop = start()
	defer func() { stop() }()
	wg.Wait()
	w.engine.Kick()
	if !eventually(func() bool { n, _ := w.q.Count(); return n == 0 }) {
		n, _ := w.q.Count()
		t.Fatalf("%d messages still queued", n)
	}
	seen := map[string]int{}
	for _, m := range mx.Received() {
		for _, r := range m.Rcpts {
			seen[r]++
		}
	}
	for s := 0; s < submitters; s++ {
		for i := 0; i < each; i++ {
			if r := fmt.Sprintf("r%d-%d@dest.test", s, i); seen[r] != 1 {
				t.Errorf("%s reached the MX %d times", r, seen[r])
			}
		}
	}
	if most > w.engine.cfg.Workers {
		t.Errorf("%d attempts at once with %d workers", most, w.engine.cfg.Workers)
	}
}
