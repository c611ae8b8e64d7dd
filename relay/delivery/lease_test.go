package delivery

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/audit"
	"github.com/postern/postern/relay/smtptest"
)

// slowMX holds every transaction at RCPT until the test lets it go.
func slowMX(t *testing.T) (mx *smtptest.MX, inRcpt chan struct{}, letGo func()) {
	inRcpt, release := make(chan struct{}, 1), make(chan struct{})
	var once sync.Once
	letGo = func() { once.Do(func() { close(release) }) }
	t.Cleanup(letGo)
	mx = smtptest.Start(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(string) error { inRcpt <- struct{}{}; <-release; return nil }
	})
	return mx, inRcpt, letGo
}

// eventually polls cond until it holds or a real-time deadline passes.
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

func (w *world) delivered(rcpt string) []audit.Record {
	w.t.Helper()
	records, err := audit.Query(w.q, audit.Filter{})
	if err != nil {
		w.t.Fatal(err)
	}
	var out []audit.Record
	for _, r := range records {
		if r.Recipient == rcpt && r.Result == audit.Delivered {
			out = append(out, r)
		}
	}
	return out
}

// An attempt that outlives delivery.lease_time (slow commands, many
// addresses) keeps its lease: no second worker is handed its recipient.
func TestLongAttemptKeepsItsLease(t *testing.T) {
	mx, inRcpt, letGo := slowMX(t)
	w := newWorld(t, mx) // lease_time 10m
	w.engine.renewCheck = time.Millisecond
	id := w.submit(sender, "a@dest.test")
	done := make(chan struct{})
	go func() { w.run(); close(done) }()
	<-inRcpt
	for i := 0; i < 4; i++ { // 24 minutes in RCPT
		w.clock.Advance(6 * time.Minute)
		renewed := eventually(func() bool {
			m, err := w.q.Get(id)
			return err == nil && m.Recipients[0].Due.Sub(w.clock.Now()) > 5*time.Minute
		})
		if !renewed {
			t.Errorf("lease not renewed %v into the attempt", time.Duration(i+1)*6*time.Minute)
		}
		if second, _ := w.q.Lease(10, time.Minute); len(second) != 0 {
			letGo()
			<-done
			t.Fatalf("recipient leased to a second worker %v into the attempt", time.Duration(i+1)*6*time.Minute)
		}
	}
	letGo()
	<-done
	if n := len(mx.Received()); n != 1 {
		t.Fatalf("delivered %d times", n)
	}
	if _, err := w.q.Get(id); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("delivered message still queued: %v", err)
	}
	if got := w.delivered("a@dest.test"); len(got) != 1 {
		t.Fatalf("audit records of the delivery: %+v", got)
	}
}

// A delivery that completes after its lease was lost (not renewed in time)
// is recorded all the same, with its audit record: the recipient is not
// tried again, and the evidence is not dropped.
func TestDeliveryAfterTheLeaseWasLostIsKept(t *testing.T) {
	mx, inRcpt, letGo := slowMX(t)
	w := newWorld(t, mx)
	w.engine.renewCheck = time.Hour // renewal never gets its turn
	id := w.submit(sender, "a@dest.test")
	done := make(chan struct{})
	go func() { w.run(); close(done) }()
	<-inRcpt
	w.clock.Advance(11 * time.Minute)
	second, err := w.q.Lease(10, time.Minute)
	if err != nil || len(second) != 1 {
		t.Fatalf("second lease: %v %v", second, err)
	}
	letGo()
	<-done
	if n := len(mx.Received()); n != 1 {
		t.Fatalf("delivered %d times", n)
	}
	if got := w.delivered("a@dest.test"); len(got) != 1 {
		t.Fatalf("audit record of the late delivery: %+v", got)
	}
	if m, err := w.q.Get(id); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("delivered recipient left to be tried again: %+v %v", m.Recipients, err)
	}
}

// An attempt whose lease cannot be renewed (here: the operator deleted the
// message under it) is cut off before it can deliver.
func TestAttemptThatLosesItsLeaseIsCutOff(t *testing.T) {
	mx, inRcpt, letGo := slowMX(t)
	w := newWorld(t, mx)
	w.engine.renewCheck = time.Millisecond
	id := w.submit(sender, "a@dest.test")
	done := make(chan struct{})
	go func() { w.run(); close(done) }()
	<-inRcpt
	if err := w.q.Delete(id); err != nil {
		t.Fatal(err)
	}
	w.clock.Advance(6 * time.Minute) // time to renew
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		letGo()
		<-done
		t.Fatal("attempt not cut off when its lease was lost")
	}
	letGo()
	if n := len(mx.Received()); n != 0 {
		t.Fatalf("delivered %d times after the lease was lost", n)
	}
}
