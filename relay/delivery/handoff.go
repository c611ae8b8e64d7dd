package delivery

import (
	"context"
	"sync"

	"github.com/postern/postern/queue"
)

// Hand-over: a message accepted while a worker is free goes to that worker
// straight away, leased in the transaction that queues it
// (queue.EnqueueLeased), as Postfix's queue manager moves fresh mail into
// its active queue. It saves the lease transaction the scheduler would
// spend, and the wait for its next look. When no worker is free the
// message is queued unleased and the scheduler finds it, as any other.

// workers is what Run shares with hand-overs: the worker slots, the
// attempts in flight and the context they run under. open is true from
// Run's start until its drain begins; mu makes a hand-over's wg.Add happen
// before the drain's Wait, or not at all.
type workers struct {
	mu    sync.Mutex
	open  bool
	slots chan struct{}
	wg    sync.WaitGroup
	work  context.Context
}

// Slot is a worker reserved for a message about to be queued. Exactly one
// of Deliver and Cancel must be called.
type Slot struct {
	e    *Engine
	once sync.Once
}

// Reserve takes a free worker for a hand-over, without waiting: false when
// every worker is busy or the engine is not running (or draining).
func (e *Engine) Reserve() (*Slot, bool) {
	w := &e.workers
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.open {
		return nil, false
	}
	select {
	case w.slots <- struct{}{}:
	default:
		return nil, false
	}
	w.wg.Add(1)
	return &Slot{e: e}, true
}

// Deliver starts the attempt on l, the lease the message was queued with.
func (s *Slot) Deliver(l queue.Lease) {
	s.once.Do(func() {
		e := s.e
		go func() {
			defer e.releaseSlot()
			e.process(e.workers.work, l)
		}()
	})
}

// Cancel gives the worker back unused (the message was not queued, or
// queued unleased).
func (s *Slot) Cancel() { s.once.Do(s.e.releaseSlot) }

func (e *Engine) releaseSlot() {
	<-e.workers.slots
	e.workers.wg.Done()
	e.Kick() // a worker is free: due work may be waiting for it
}

// openWorkers readies the slots for Run and for hand-overs.
func (e *Engine) openWorkers(work context.Context) {
	w := &e.workers
	w.mu.Lock()
	defer w.mu.Unlock()
	w.slots, w.work, w.open = make(chan struct{}, e.cfg.Workers), work, true
}

// closeWorkers refuses hand-overs from now on, before the drain waits.
func (e *Engine) closeWorkers() {
	w := &e.workers
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open = false
}
