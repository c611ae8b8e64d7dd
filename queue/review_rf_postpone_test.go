package queue

import (
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
