package audit

import (
	"testing"
	"time"

	"github.com/postern/postern/queue"
)

type journal []queue.JournalEntry

func (j journal) ReadJournal(from, to time.Time, fn func(queue.JournalEntry) bool) error {
	for _, e := range j {
		if e.Time.Before(from) || !to.IsZero() && !e.Time.Before(to) {
			continue
		}
		if !fn(e) {
			break
		}
	}
	return nil
}

func TestQueryFilters(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	rec := func(h int, rcpt, id string) queue.JournalEntry {
		return queue.JournalEntry{Time: t0.Add(time.Duration(h) * time.Hour), Data: Record{Recipient: rcpt, MessageID: id}.Encode()}
	}
	j := journal{
		rec(1, "a@bank.example", "<m1@x>"),
		{Time: t0.Add(2 * time.Hour), Data: []byte("T{}")}, // another kind of entry
		rec(3, "b@other.example", "<m2@x>"),
		rec(5, "c@Bank.Example", "<m3@x>"),
	}
	for _, tc := range []struct {
		f    Filter
		want int
	}{
		{Filter{}, 3},
		{Filter{RcptDomain: "bank.example"}, 2},
		{Filter{RcptDomain: "bank.example", Since: t0.Add(2 * time.Hour)}, 1},
		{Filter{Until: t0.Add(3 * time.Hour)}, 1},
		{Filter{MessageID: "m2@x"}, 1},
	} {
		got, err := Query(j, tc.f)
		if err != nil || len(got) != tc.want {
			t.Errorf("%+v: %d records (%v), want %d", tc.f, len(got), err, tc.want)
		}
	}
}
