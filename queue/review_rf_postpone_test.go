package queue

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A postponement that carries the recipient's delay notice records it as
// told (and queues the notice) without counting an attempt or touching the
// last reply, so the notice is sent once.
func TestPostponedRecipientRecordsItsDelayNotice(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	l, _ := q.Lease(1, time.Hour)
	notice := Draft{Envelope: Envelope{Recipients: []Recipient{{Addr: "s@y.test"}}}, Body: []byte("delayed")}
	m, err := q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultPostponed, RetryAt: clock.Now().Add(time.Minute),
		Reply: "4.4.5 x.test is busy", Status: "4.4.5", DelayNotified: true, Notices: []Draft{notice}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Recipients[0]; !r.DelayNotified || r.Attempts != 0 || r.LastReply != "" || r.State != Pending {
		t.Fatalf("postponed recipient with its delay notice: %+v", r)
	}
	clock.Advance(time.Second)
	ls, _ := q.Lease(10, time.Hour)
	if len(ls) != 1 || ls[0].Message.ID == id || ls[0].Message.Recipients[0].Addr != "s@y.test" {
		t.Fatalf("the delay notice was not queued: %+v", ls)
	}
}

// A postponement recorded after its lease ran out and the recipient was
// leased again changes nothing: the new holder's lease stands, and its own
// outcome is what is recorded.
func TestLatePostponementDoesNotOverwriteTheNewHolder(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	first, _ := q.Lease(1, time.Minute)
	clock.Advance(2 * time.Minute)
	second, _ := q.Lease(1, time.Minute)
	if len(second) != 1 {
		t.Fatal("the lapsed lease was not granted again")
	}
	_, err := q.Record(id, first[0].Seq, []Outcome{{Recipient: 0, Result: ResultPostponed, RetryAt: clock.Now().Add(time.Hour),
		DelayNotified: true, Notices: []Draft{{Envelope: Envelope{Recipients: []Recipient{{Addr: "s@y.test"}}}, Body: []byte("d")}}}})
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("a late postponement: %v", err)
	}
	m, _ := q.Get(id)
	if r := m.Recipients[0]; r.State != Leased || r.Lease != second[0].Seq || r.DelayNotified {
		t.Fatalf("a late postponement changed the new holder's recipient: %+v", r)
	}
	if n, _ := q.List(Filter{}); len(n) != 1 {
		t.Fatalf("a late postponement's notice was queued: %d messages", len(n))
	}
	m, err = q.Record(id, second[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Reply: "250 ok"}})
	if err != nil || m.Recipients[0].State != Delivered {
		t.Fatalf("the new holder's outcome: %v %+v", err, m.Recipients[0])
	}
}
