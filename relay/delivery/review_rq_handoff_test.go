package delivery

import (
	"context"
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
