package queue

import (
	"strings"
	"testing"
	"time"
)

// A message enqueued with its lease is the worker's at once: the scheduler
// does not hand it out again while the lease runs, and the lease records
// outcomes as one from Lease would.
func TestEnqueueLeasedHandsTheMessageOver(t *testing.T) {
	clock, dir := newClock(), t.TempDir()
	q := openTest(t, clock, dir, 0)
	defer q.Close()
	id, l, err := q.EnqueueLeased("", envelope("a@x.test", "b@y.test"), strings.NewReader("body"), nil, time.Minute, nil)
	if err != nil || l == nil {
		t.Fatalf("enqueue leased: %v, lease %v", err, l)
	}
	if l.Message.ID != id || len(l.Recipients) != 2 || l.Retire || !l.Until.Equal(clock.Now().Add(time.Minute)) {
		t.Fatalf("lease %+v", l)
	}
	if got := string(readBody(t, q, id)); got != "body" {
		t.Fatalf("body %q", got)
	}
	if leases, err := q.Lease(10, time.Minute); err != nil || len(leases) != 0 {
		t.Fatalf("the scheduler was handed a leased message: %d leases, %v", len(leases), err)
	}
	m, err := q.Record(id, l.Seq, []Outcome{{Recipient: 0, Result: ResultDelivered}, {Recipient: 1, Result: ResultDeferred, RetryAt: clock.Now().Add(time.Hour)}})
	if err != nil || m.Recipients[0].State != Delivered || m.Recipients[1].State != Pending {
		t.Fatalf("record under the enqueue's lease: %v, %+v", err, m.Recipients)
	}
}

// A process that dies holding the lease it got with the message loses
// nothing: the message is due again when the lease ends, as with any lease,
// and at once after Recover.
func TestEnqueueLeasedMessageIsDueWhenTheLeaseEnds(t *testing.T) {
	clock, dir := newClock(), t.TempDir()
	q := openTest(t, clock, dir, 0)
	id, l, err := q.EnqueueLeased("", envelope("a@x.test"), strings.NewReader("body"), nil, time.Minute, nil)
	if err != nil || l == nil {
		t.Fatalf("enqueue leased: %v", err)
	}
	q.Close() // the worker never records: the process died

	q = openTest(t, clock, dir, 0)
	if leases, _ := q.Lease(10, time.Minute); len(leases) != 0 {
		t.Fatal("a lease still running was handed out again")
	}
	clock.Advance(time.Minute)
	leases, err := q.Lease(10, time.Minute)
	if err != nil || len(leases) != 1 || leases[0].Message.ID != id || leases[0].Seq == l.Seq {
		t.Fatalf("once the lease ended: %d leases, %v", len(leases), err)
	}
	q.Close()

	q = openTest(t, clock, dir, 0)
	defer q.Close()
	if _, err := q.Recover(); err != nil {
		t.Fatal(err)
	}
	if leases, _ := q.Lease(10, time.Minute); len(leases) != 1 {
		t.Fatalf("after Recover: %d leases, want the message due at once", len(leases))
	}
}

// A message without recipients is enqueued as Enqueue would, unleased.
func TestEnqueueLeasedWithoutRecipients(t *testing.T) {
	q := openTest(t, newClock(), t.TempDir(), 0)
	defer q.Close()
	if _, l, err := q.EnqueueLeased("", envelope(), strings.NewReader("x"), nil, time.Minute, nil); err != nil || l != nil {
		t.Fatalf("%v, lease %v", err, l)
	}
}

// take is asked once the body is stored; when it says no, the message is
// queued unleased, for the scheduler.
func TestEnqueueLeasedAsksBeforeLeasing(t *testing.T) {
	q := openTest(t, newClock(), t.TempDir(), 0)
	defer q.Close()
	asked := false
	id, l, err := q.EnqueueLeased("", envelope("a@x.test"), strings.NewReader("x"), nil, time.Minute, func() bool { asked = true; return false })
	if err != nil || l != nil || !asked {
		t.Fatalf("%v, lease %v, asked %v", err, l, asked)
	}
	if leases, _ := q.Lease(10, time.Minute); len(leases) != 1 || leases[0].Message.ID != id {
		t.Fatalf("the message not taken is not the scheduler's: %d leases", len(leases))
	}
}

// The scheduler looks after every submission and attempt; a look that
// finds nothing due must not cost a write transaction (a commit and its
// fsyncs).
func TestLeaseWithNothingDueWritesNothing(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	if _, _, err := q.EnqueueLeased("", envelope("a@x.test"), strings.NewReader("x"), nil, time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	written := func() int64 { st := q.db.Stats(); return st.TxStats.GetWrite() }
	before := written()
	if leases, err := q.Lease(10, time.Minute); err != nil || len(leases) != 0 {
		t.Fatalf("%d leases, %v", len(leases), err)
	}
	if after := written(); after != before {
		t.Fatalf("a look with nothing due wrote %d pages", after-before)
	}
}

// Due counts what a Lease would find, up to its bound: a message leased in
// its enqueue is not due until its lease ends, one queued plainly is.
func TestDueCountsWhatALeaseWouldFind(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	if _, _, err := q.EnqueueLeased("", envelope("a@x.test"), strings.NewReader("x"), nil, time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := q.Enqueue("", envelope("b@x.test"), strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ max, want int }{{10, 3}, {2, 2}, {0, 0}} {
		if n, err := q.Due(c.max); err != nil || n != c.want {
			t.Errorf("Due(%d) = %d, %v; want %d", c.max, n, err, c.want)
		}
	}
	clock.Advance(2 * time.Minute) // the first lease has run out
	if n, _ := q.Due(10); n != 4 {
		t.Errorf("Due after the lease ran out = %d, want 4", n)
	}
}
