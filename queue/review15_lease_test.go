package queue

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// A delay notice covers several recipients of one lease and rides on the
// first outcome it covers. When that one recipient is no longer held (a
// worker that lost the lease delivered it meanwhile), the notice is not
// queued; the other recipients it covered must then not be marked as
// notified, or their sender never hears of the delay.
func TestDelayNoticeNotQueuedLeavesItsRecipientsUnmarked(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	env := envelope("a@x.test", "b@x.test")
	for i := range env.Recipients {
		env.Recipients[i].Notify = []string{"DELAY", "FAILURE"}
	}
	id, err := q.Enqueue("", env, strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	first := mustLease(t, q, 1)
	clock.Advance(2 * time.Minute)
	second := mustLease(t, q, 1) // the first worker's lease ran out
	if len(first) != 1 || len(second) != 1 || len(second[0].Recipients) != 2 {
		t.Fatalf("leases: %+v then %+v", first, second)
	}
	// The first worker delivered a@ before it noticed.
	if _, err := q.Record(id, first[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Reply: "250 ok"}}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("late delivery: %v", err)
	}
	// The second worker was deferred for both, and warns of the delay for
	// both in one notice, carried by the first outcome it covers.
	notice := Draft{Envelope: Envelope{Recipients: []Recipient{{Addr: "app@example.org", Notify: []string{"NEVER"}}}}, Body: []byte("delayed: a@, b@")}
	_, err = q.Record(id, second[0].Seq, []Outcome{
		{Recipient: 0, Result: ResultDeferred, RetryAt: clock.Now().Add(time.Hour), DelayNotified: true, Notices: []Draft{notice}},
		{Recipient: 1, Result: ResultDeferred, RetryAt: clock.Now().Add(time.Hour), DelayNotified: true},
	})
	if err != nil {
		t.Fatalf("second worker's outcomes: %v", err)
	}
	n, _ := q.Count()
	queued := n == 2
	if b := mustGet(t, q, id).Recipients[1]; b.DelayNotified && !queued {
		t.Fatalf("b@ is marked as told of its delay, but no notice was queued (%d messages in the queue)", n)
	}
}

// A worker that lost its lease may still deliver; by the time it records,
// the message may be gone: the second worker finished and retired it, or
// the operator deleted it under the attempt. The delivery happened all the
// same, and its evidence must be kept, not dropped with ErrNotFound.
func TestDeliveryOfAMessageGoneMeanwhileKeepsItsEvidence(t *testing.T) {
	for _, how := range []string{"retired by the second worker", "deleted by the operator"} {
		t.Run(how, func(t *testing.T) {
			clock := newClock()
			q := openTest(t, clock, t.TempDir(), 0)
			defer q.Close()
			id, err := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			first := mustLease(t, q, 1)
			if how == "deleted by the operator" {
				if err := q.Delete(id); err != nil {
					t.Fatal(err)
				}
			} else {
				clock.Advance(2 * time.Minute)
				second := mustLease(t, q, 1)
				_, err := q.Record(id, second[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Reply: "250 second",
					Journal: [][]byte{[]byte("second worker's delivery")}}}, func(Message) bool { return true })
				if err != nil {
					t.Fatal(err)
				}
			}
			start := clock.Now()
			_, err = q.Record(id, first[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Reply: "250 first",
				Journal: [][]byte{[]byte("first worker's delivery")}}})
			if err == nil {
				t.Fatal("recording against a message that is gone succeeded")
			}
			var got []string
			q.ReadJournal(start, time.Time{}, func(e JournalEntry) bool { got = append(got, string(e.Data)); return true })
			if !slices.Contains(got, "first worker's delivery") {
				t.Fatalf("evidence of a delivery that happened was dropped (%v); journal: %q", err, got)
			}
		})
	}
}

// When both workers delivered (the first one's lease ran out under it), the
// recipient got two copies: both deliveries happened, and the evidence of
// each is kept, whichever was recorded first. So too when the second worker
// was refused and failed the recipient: the first worker's delivery stands
// as evidence against the bounce.
func TestEveryDeliveryUnderALostLeaseKeepsItsEvidence(t *testing.T) {
	for _, second := range []Result{ResultDelivered, ResultFailed} {
		t.Run(map[Result]string{ResultDelivered: "second delivered", ResultFailed: "second failed"}[second], func(t *testing.T) {
			clock := newClock()
			q := openTest(t, clock, t.TempDir(), 0)
			defer q.Close()
			id, err := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			first := mustLease(t, q, 1)
			clock.Advance(2 * time.Minute)
			again := mustLease(t, q, 1)
			if _, err := q.Record(id, again[0].Seq, []Outcome{{Recipient: 0, Result: second, Reply: "second worker",
				Journal: [][]byte{[]byte("second worker's outcome")}}}); err != nil {
				t.Fatal(err)
			}
			start := clock.Now()
			q.Record(id, first[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Reply: "250 first",
				Journal: [][]byte{[]byte("first worker's delivery")}}})
			var got []string
			q.ReadJournal(start, time.Time{}, func(e JournalEntry) bool { got = append(got, string(e.Data)); return true })
			if !slices.Contains(got, "first worker's delivery") {
				t.Fatalf("evidence of the first worker's delivery was dropped; journal: %q", got)
			}
		})
	}
}
