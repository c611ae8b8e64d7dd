package queue

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func TestJournalIsWrittenWithTheOutcome(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, err := q.Enqueue("", envelope("a@x.test", "b@x.test"), strings.NewReader("hello\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	leases, _ := q.Lease(10, time.Minute)
	start := clock.Now()
	if _, err := q.Record(id, leases[0].Seq, []Outcome{
		{Recipient: 0, Result: ResultDelivered, Journal: [][]byte{[]byte("a delivered")}},
		{Recipient: 1, Result: ResultDeferred, RetryAt: clock.Now().Add(time.Hour)}, // nothing to journal
	}); err != nil {
		t.Fatal(err)
	}
	// A stale holder's outcome is not applied, so not journalled either.
	q.Record(id, leases[0].Seq, []Outcome{{Recipient: 1, Result: ResultFailed, Journal: [][]byte{[]byte("stale")}}})

	clock.Advance(2 * time.Hour)
	leases, _ = q.Lease(10, time.Minute)
	if _, err := q.Record(id, leases[0].Seq, []Outcome{{Recipient: 1, Result: ResultFailed, Journal: [][]byte{[]byte("b bounced")}}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	q.ReadJournal(start, time.Time{}, func(e JournalEntry) bool { got = append(got, string(e.Data)); return true })
	if strings.Join(got, ",") != "a delivered,b bounced" {
		t.Fatalf("journal: %q", got)
	}
	got = nil
	q.ReadJournal(start.Add(time.Hour), time.Time{}, func(e JournalEntry) bool { got = append(got, string(e.Data)); return true })
	if strings.Join(got, ",") != "b bounced" {
		t.Fatalf("journal from an hour on: %q", got)
	}
	if n, err := q.PruneJournal(start.Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	got = nil
	q.ReadJournal(time.Time{}, time.Time{}, func(e JournalEntry) bool { got = append(got, string(e.Data)); return true })
	if strings.Join(got, ",") != "b bounced" {
		t.Fatalf("after prune: %q", got)
	}
}

func TestEnqueueSealed(t *testing.T) {
	for _, size := range []int{100, 200 << 10} { // inline and spooled
		q := openTest(t, newClock(), t.TempDir(), 0)
		body := strings.Repeat("x", size)
		var seen int
		id, err := q.EnqueueSealed("", envelope("a@x.test"), strings.NewReader(body), func() ([]byte, error) {
			seen = size // the seal runs after the whole body was read
			return []byte("Sealed: yes\r\n"), nil
		})
		if err != nil || seen != size {
			t.Fatal(err)
		}
		r, err := q.Body(id)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		r.Close()
		m, _ := q.Get(id)
		if string(got) != "Sealed: yes\r\n"+body || m.Size != int64(len(got)) {
			t.Fatalf("size %d: body %d bytes (%q…), recorded size %d", size, len(got), got[:min(20, len(got))], m.Size)
		}
		if _, err := q.EnqueueSealed("", envelope("a@x.test"), strings.NewReader(body), func() ([]byte, error) {
			return nil, errors.New("no key")
		}); err == nil {
			t.Fatal("a failed seal stored the message")
		}
		if n, _ := q.Count(); n != 1 {
			t.Fatalf("%d messages after a failed seal", n)
		}
		q.Close()
	}
}

func TestJournalNewestFirst(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	start := clock.Now()
	for i := range 4 {
		id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
		for _, l := range mustLease(t, q, 10) {
			if l.Message.ID == id {
				if _, err := q.Record(id, l.Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Journal: [][]byte{[]byte(fmt.Sprint(i))}}}); err != nil {
					t.Fatal(err)
				}
			}
		}
		clock.Advance(time.Minute)
	}
	read := func(from, to time.Time, max int) string {
		var got []string
		q.ReadJournalNewestFirst(from, to, func(e JournalEntry) bool { got = append(got, string(e.Data)); return len(got) < max })
		return strings.Join(got, ",")
	}
	for _, tc := range []struct {
		from, to time.Time
		max      int
		want     string
	}{
		{time.Time{}, time.Time{}, 10, "3,2,1,0"},
		{start.Add(time.Minute), time.Time{}, 10, "3,2,1"},
		{time.Time{}, start.Add(2 * time.Minute), 10, "1,0"},
		{start.Add(time.Minute), start.Add(3 * time.Minute), 10, "2,1"},
		{time.Time{}, start.Add(time.Hour), 2, "3,2"},
		{time.Time{}, start, 10, ""},
	} {
		if got := read(tc.from, tc.to, tc.max); got != tc.want {
			t.Errorf("[%v, %v) max %d: %q, want %q", tc.from.Sub(start), tc.to.Sub(start), tc.max, got, tc.want)
		}
	}
}
