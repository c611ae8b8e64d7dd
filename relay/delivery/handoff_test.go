package delivery

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
)

// submitLeased queues a message as the daemon's submission does when a
// worker is free: reserve a slot, enqueue with the lease; it returns the
// slot (nil when none was free) and the lease.
func (w *world) submitLeased(rcpt string) (string, *Slot, *queue.Lease) {
	w.t.Helper()
	var slot *Slot
	env := queue.Envelope{From: sender, Recipients: []queue.Recipient{{Addr: rcpt}}}
	id, l, err := w.q.EnqueueLeased("", env, strings.NewReader(body), nil, w.engine.cfg.LeaseTime,
		func() bool { var ok bool; slot, ok = w.engine.Reserve(); return ok })
	if err != nil {
		w.t.Fatal(err)
	}
	return id, slot, l
}

// runEngineForHandOvers runs the engine until the test ends, and returns once its
// workers take hand-overs.
func (w *world) runEngineForHandOvers() {
	w.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { w.engine.Run(ctx); close(stopped) }()
	w.t.Cleanup(func() { cancel(); <-stopped })
	if !eventually(func() bool {
		if s, ok := w.engine.Reserve(); ok {
			s.Cancel()
			return true
		}
		return false
	}) {
		w.t.Fatal("the engine never took hand-overs")
	}
}

// A message handed to a free worker with its lease is delivered by it:
// the scheduler never leases it.
func TestHandedOverMessageIsDelivered(t *testing.T) {
	mx := smtptest.Start(t, nil)
	w := newWorld(t, mx)
	w.runEngineForHandOvers()
	id, slot, l := w.submitLeased("a@dest.test")
	if slot == nil || l == nil {
		t.Fatal("no worker was reserved with two free")
	}
	slot.Deliver(*l)
	if !eventually(func() bool { _, err := w.q.Get(id); return errors.Is(err, queue.ErrNotFound) }) {
		t.Fatalf("the handed-over message was not delivered and retired: %+v", w.state(id).Recipients)
	}
	if got := mx.Received(); len(got) != 1 || got[0].Rcpts[0] != "a@dest.test" {
		t.Fatalf("at the MX: %+v", got)
	}
	if r := w.delivered("a@dest.test"); len(r) != 1 {
		t.Fatalf("delivery evidence: %+v", r)
	}
}

// With every worker busy, a hand-over is refused at once (Reserve does
// not wait), the message is queued unleased, and the scheduler delivers it
// once a worker is free. A stopped engine takes no hand-over either.
func TestHandOverWithNoWorkerFreeFallsBackToTheScheduler(t *testing.T) {
	mx, inRcpt, letGo := slowMX(t)
	w := newWorld(t, mx) // two workers
	if s, ok := w.engine.Reserve(); ok {
		s.Cancel()
		t.Fatal("an engine that is not running took a hand-over")
	}
	w.runEngineForHandOvers()
	var ids []string
	for i := 0; i < 2; i++ { // both workers held at RCPT
		id, slot, l := w.submitLeased("busy@dest.test")
		if slot == nil {
			t.Fatalf("hand-over %d refused with a worker free", i)
		}
		slot.Deliver(*l)
		<-inRcpt
		ids = append(ids, id)
	}
	id, slot, l := w.submitLeased("later@dest.test")
	if slot != nil || l != nil {
		t.Fatal("a hand-over was taken with every worker busy")
	}
	if leased := w.state(id).Recipients[0]; leased.State != queue.Pending {
		t.Fatalf("the refused message is not the scheduler's: %+v", leased)
	}
	letGo()
	w.engine.Kick()
	if !eventually(func() bool { return len(mx.Received()) == 3 }) {
		t.Fatalf("%d of 3 messages at the MX", len(mx.Received()))
	}
}

// A process that dies after queueing a message with its lease and before
// its worker delivers it loses nothing: the message is due when the lease
// ends, and the scheduler delivers it then.
func TestHandedOverMessageWhoseWorkerDiedIsDeliveredAfterTheLease(t *testing.T) {
	mx := smtptest.Start(t, nil)
	w := newWorld(t, mx)
	w.runEngineForHandOvers()
	id, slot, l := w.submitLeased("a@dest.test")
	if slot == nil || l == nil {
		t.Fatal("no worker was reserved")
	}
	slot.Cancel() // the worker never starts: as if the process died here
	w.run()
	if len(mx.Received()) != 0 || w.state(id).Recipients[0].State != queue.Leased {
		t.Fatal("a message under a running lease was delivered by the scheduler")
	}
	w.clock.Advance(w.engine.cfg.LeaseTime)
	w.engine.Kick() // the running scheduler, or RunDue here: whichever leases it first
	w.run()
	if !eventually(func() bool { _, err := w.q.Get(id); return errors.Is(err, queue.ErrNotFound) }) {
		t.Fatalf("not delivered after the lease ended: %+v", w.state(id).Recipients)
	}
	if got := mx.Received(); len(got) != 1 {
		t.Fatalf("after the lease ended: %d at the MX", len(got))
	}
}

// stalledLeaseQueue is a queue whose Lease does not return until released,
// as a Lease waiting for its commit's fsync behind a busy disk.
type stalledLeaseQueue struct {
	Queue
	entered chan struct{}
	release chan struct{}
}

func (s *stalledLeaseQueue) Lease(max int, hold time.Duration) ([]queue.Lease, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.Queue.Lease(max, hold)
}

// The scheduler sets workers aside only for work that is due. It used to
// take every free worker before each Lease, due work or not; every
// submission kicks it, so fresh mail found no worker free for its hand-over
// while the scheduler looked (and was leased by the scheduler instead, a
// transaction more), which made the hand-over tests fail now and then in
// CI ("hand-over 0 refused with a worker free").
func TestSchedulerSetsNoWorkerAsideWithNothingDue(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	stalled := &stalledLeaseQueue{Queue: w.q, entered: make(chan struct{}, 1), release: make(chan struct{})}
	d := w.engine.d
	d.Queue = stalled
	e := New(w.engine.cfg, d)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { e.Run(ctx); close(stopped) }()
	defer func() { close(stalled.release); cancel(); <-stopped }()
	reserved := 0
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		e.Kick()
		select {
		case <-stalled.entered:
			t.Fatal("the scheduler leased with nothing due, holding its free workers meanwhile")
		default:
		}
		if s, ok := e.Reserve(); ok {
			reserved++
			s.Cancel()
		}
		time.Sleep(time.Millisecond)
	}
	if reserved == 0 {
		t.Fatal("no hand-over was ever taken by an idle engine")
	}
}
