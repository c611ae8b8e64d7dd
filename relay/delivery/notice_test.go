package delivery

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
)

// flakyBodies fails the calls to Body that fail says should fail.
type flakyBodies struct {
	*queue.Queue
	mu    sync.Mutex
	calls int
	fail  func(call int) bool
}

func (f *flakyBodies) Body(id string) (io.ReadCloser, error) {
	f.mu.Lock()
	f.calls++
	fail := f.fail(f.calls)
	f.mu.Unlock()
	if fail {
		return nil, fmt.Errorf("open body of %s: %w", id, syscall.EMFILE)
	}
	return f.Queue.Body(id)
}

func temporary(string) error {
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "still not"}
}

// deferringMX refuses a@dest.test for now, and takes the notices.
func deferringMX(t *testing.T) *smtptest.MX {
	return smtptest.Start(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(rcpt string) error {
			if rcpt == sender {
				return nil
			}
			return temporary(rcpt)
		}
	})
}

func (w *world) countNotices(action string) int {
	n := 0
	for _, b := range w.bounces() {
		if strings.Contains(b, "Action: "+action) {
			n++
		}
	}
	return n
}

// A message whose spool file is gone still gets its failure notice: one
// that says the content was lost, rather than none at all.
func TestFailureNoticeWhenTheBodyIsGone(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	dir := t.TempDir()
	q, err := queue.Open(filepath.Join(dir, "queue.db"), queue.Options{Clock: w.clock.Now, InlineLimit: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	w.q, w.engine.d.Queue = q, q
	id := w.submit(sender, "a@dest.test")
	if err := os.Remove(filepath.Join(dir, "spool", id)); err != nil {
		t.Fatal(err)
	}
	if _, err := q.FailNow(id, "5.0.0 returned by the test"); err != nil {
		t.Fatal(err)
	}
	w.run()
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Action: failed") || !strings.Contains(b[0], "could not be read back") ||
		strings.Contains(b[0], "text/rfc822-headers") {
		t.Fatalf("notice for a message whose body is gone: %q", b)
	}
	if _, err := q.Get(id); err == nil {
		t.Fatal("message not retired")
	}
}

// A body that cannot be read for now (too many open files) holds the
// retirement back until the notice can be built; it is never skipped.
func TestRetireWaitsForANoticeThatCannotBeBuiltYet(t *testing.T) {
	w := newWorld(t, smtptest.Start(t, nil))
	flaky := &flakyBodies{Queue: w.q, fail: func(call int) bool { return call == 1 }}
	w.engine.d.Queue = flaky
	id := w.submit(sender, "a@dest.test")
	if _, err := w.q.FailNow(id, "5.0.0 returned by the test"); err != nil {
		t.Fatal(err)
	}
	w.run()
	if _, err := w.q.Get(id); err != nil {
		t.Fatalf("retired without its notice: %v", err)
	}
	if len(w.bounces()) != 0 {
		t.Fatal("notice sent without its body")
	}
	w.clock.Advance(w.engine.cfg.LeaseTime + time.Second) // the retirement lease runs out
	w.run()
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Action: failed") || !strings.Contains(b[0], "Subject: hi") {
		t.Fatalf("notice once the body could be read: %q", b)
	}
}

// A delay warning that could not be built is not marked as sent: the next
// deferral sends it.
func TestDelayWarningNotMarkedWhenItCouldNotBeBuilt(t *testing.T) {
	w := newWorld(t, deferringMX(t))
	// Body is opened for the attempt, then for the warning: the second fails.
	flaky := &flakyBodies{Queue: w.q, fail: func(call int) bool { return call == 2 }}
	w.engine.d.Queue = flaky
	id := w.submit(sender, "a@dest.test")
	w.clock.Advance(5 * time.Hour) // past the 4h delay warning
	w.run()
	if r := w.state(id).Recipients[0]; r.DelayNotified || w.countNotices("delayed") != 0 {
		t.Fatalf("after a warning that could not be built: DelayNotified %v, %d warnings", r.DelayNotified, w.countNotices("delayed"))
	}
	w.clock.Advance(2 * time.Minute)
	w.run()
	if r := w.state(id).Recipients[0]; !r.DelayNotified || w.countNotices("delayed") != 1 {
		t.Fatalf("after the next deferral: DelayNotified %v, %d warnings", r.DelayNotified, w.countNotices("delayed"))
	}
}

// A delay warning goes with its outcome: when the outcome is not recorded
// (the lease was lost while the attempt ran), neither is the warning, and
// the recipient is warned once, not once per attempt that saw it.
func TestDelayWarningIsRecordedWithItsOutcome(t *testing.T) {
	inRcpt, release := make(chan struct{}, 1), make(chan struct{})
	var once, first sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	t.Cleanup(letGo)
	mx := smtptest.Start(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(rcpt string) error {
			if rcpt == sender {
				return nil
			}
			first.Do(func() { inRcpt <- struct{}{}; <-release })
			return temporary(rcpt)
		}
	})
	w := newWorld(t, mx)
	w.engine.renewCheck = time.Hour // the first attempt loses its lease
	id := w.submit(sender, "a@dest.test")
	w.clock.Advance(5 * time.Hour)
	done := make(chan struct{})
	go func() { w.engine.RunDue(context.Background()); close(done) }()
	<-inRcpt
	w.clock.Advance(11 * time.Minute)
	if second, err := w.q.Lease(10, time.Minute); err != nil || len(second) != 1 {
		t.Fatalf("second lease: %v %v", second, err)
	}
	letGo()
	<-done
	w.clock.Advance(2 * time.Minute) // the second holder vanished; its lease runs out
	w.run()
	if n := w.countNotices("delayed"); n != 1 {
		t.Fatalf("%d delay warnings for one recipient", n)
	}
	if r := w.state(id).Recipients[0]; !r.DelayNotified {
		t.Fatalf("warned recipient not marked: %+v", r)
	}
}
