package queue

import (
	"strings"
	"testing"
	"time"
)

// A postponed recipient (its destination had no free connection) goes back
// unattempted, due when the worker said: no attempt is counted, its last
// reply and delay notice stay as they were, nothing is journalled, and it
// is not leased again before it is due.
func TestPostponedRecipientIsDueLaterWithoutAnAttempt(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	l, _ := q.Lease(1, time.Hour)
	_, err := q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultDeferred, Reply: "451 4.3.0 later", Status: "4.3.0",
		RetryAt: clock.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	l, _ = q.Lease(1, time.Hour)
	m, err := q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultPostponed, RetryAt: clock.Now().Add(3 * time.Second),
		Journal: [][]byte{[]byte("not journalled")}}})
	if err != nil {
		t.Fatal(err)
	}
	r := m.Recipients[0]
	if r.State != Pending || r.Attempts != 1 || r.LastReply != "451 4.3.0 later" || !r.Due.Equal(clock.Now().Add(3*time.Second)) {
		t.Fatalf("postponed recipient: %+v", r)
	}
	if again, _ := q.Lease(1, time.Minute); len(again) != 0 {
		t.Fatalf("postponed recipient leased again before it was due: %+v", again)
	}
	clock.Advance(3 * time.Second)
	if again, _ := q.Lease(1, time.Minute); len(again) != 1 {
		t.Fatalf("postponed recipient not leased once due: %+v", again)
	}
	n := 0
	q.ReadJournal(time.Time{}, clock.Now().Add(time.Hour), func(JournalEntry) bool { n++; return true })
	if n != 0 {
		t.Fatalf("a postponed recipient's journal entries were written: %d", n)
	}
}
