package queue

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A worker whose attempt outlived its lease still delivered: the recipient
// must not be tried again, and the evidence must be kept.
func TestDeliveryUnderALostLeaseIsKept(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	first := mustLease(t, q, 1)
	clock.Advance(2 * time.Minute)
	second := mustLease(t, q, 1) // the lease ran out: a second worker has it
	start := clock.Now()

	m, err := q.Record(id, first[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Reply: "250 ok",
		Host: "mx.x.test", Journal: [][]byte{[]byte("a delivered by the first worker")}}})
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("late delivery: %v, want ErrLeaseLost", err)
	}
	if r := m.Recipients[0]; r.State != Delivered || r.LastHost != "mx.x.test" || m.RetireSeq == 0 {
		t.Fatalf("late delivery not recorded: %+v (retire %d)", r, m.RetireSeq)
	}
	var got []string
	q.ReadJournal(start, time.Time{}, func(e JournalEntry) bool { got = append(got, string(e.Data)); return true })
	if strings.Join(got, ",") != "a delivered by the first worker" {
		t.Fatalf("evidence of the late delivery: %q", got)
	}
	// The second worker's deferral must not make the recipient due again.
	if _, err := q.Record(id, second[0].Seq, []Outcome{{Recipient: 0, Result: ResultDeferred, RetryAt: clock.Now()}}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("second worker's deferral: %v, want ErrLeaseLost", err)
	}
	if r := mustGet(t, q, id).Recipients[0]; r.State != Delivered {
		t.Fatalf("recipient after the second worker: %+v", r)
	}
	if err := q.Retire(id, m.RetireSeq); err != nil {
		t.Fatalf("retire by the worker that finished it: %v", err)
	}
}

// Renew keeps a long attempt's recipients from being leased again, and says
// when the lease is no longer held.
func TestRenewKeepsTheLease(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	l := mustLease(t, q, 1)
	for i := 0; i < 5; i++ {
		clock.Advance(40 * time.Second)
		until, err := q.Renew(id, l[0].Seq, time.Minute)
		if err != nil || !until.Equal(clock.Now().Add(time.Minute)) {
			t.Fatalf("renew %d: %v %v", i, until, err)
		}
		if again, _ := q.Lease(1, time.Minute); len(again) != 0 {
			t.Fatalf("renewed lease granted again after %d renewals", i+1)
		}
	}
	clock.Advance(2 * time.Minute)
	mustLease(t, q, 1)
	if _, err := q.Renew(id, l[0].Seq, time.Minute); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renew of a lost lease: %v", err)
	}
}

func mustGet(t *testing.T, q *Queue, id string) Message {
	t.Helper()
	m, err := q.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// An outcome's enhanced status is kept beside its reply, for the notice
// that may quote it later; an operator's FailNow, which gives none, clears it.
func TestRecordKeepsStatus(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	l := mustLease(t, q, 1)
	if _, err := q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultDeferred, Reply: "451 4.3.0 try later",
		Status: "4.3.0", RetryAt: clock.Now()}}); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.Get(id); m.Recipients[0].LastStatus != "4.3.0" {
		t.Fatalf("recorded %+v; want LastStatus 4.3.0", m.Recipients[0])
	}
	if _, err := q.FailNow(id, "5.0.0 returned by the operator"); err != nil {
		t.Fatal(err)
	}
	if m, _ := q.Get(id); m.Recipients[0].LastStatus != "" || m.Recipients[0].LastReply != "5.0.0 returned by the operator" {
		t.Fatalf("after FailNow %+v; want no status", m.Recipients[0])
	}
}
