package queue

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// wallClock is the real time, for benchmarks.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func openTest(t testing.TB, clock interface{ Now() time.Time }, dir string, inline int64) *Queue {
	t.Helper()
	q, err := Open(filepath.Join(dir, "queue.db"), Options{Clock: clock.Now, InlineLimit: inline})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func envelope(rcpts ...string) Envelope {
	env := Envelope{From: "app@example.org", AuthUser: "app", ClientIP: "127.0.0.1", Return: "HDRS", EnvelopeID: "env-1"}
	for _, r := range rcpts {
		env.Recipients = append(env.Recipients, Recipient{Addr: r, Notify: []string{"FAILURE"}})
	}
	return env
}

func readBody(t *testing.T, q *Queue, id string) []byte {
	t.Helper()
	rc, err := q.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnqueueSurvivesReopen(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		spooled bool
	}{{"inline", 2000, false}, {"spooled", 300 << 10, true}, {"empty", 0, false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir, clock := t.TempDir(), newClock()
			q := openTest(t, clock, dir, 64<<10)
			body := bytes.Repeat([]byte("0123456789abcde\n"), tc.size/16)
			id, err := q.Enqueue("", envelope("a@x.test", "b@y.test"), bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			q.Close()

			q = openTest(t, clock, dir, 64<<10)
			defer q.Close()
			m, err := q.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			if m.Spooled != tc.spooled || m.Size != int64(len(body)) {
				t.Errorf("spooled=%v size=%d, want %v %d", m.Spooled, m.Size, tc.spooled, len(body))
			}
			if m.From != "app@example.org" || len(m.Recipients) != 2 || m.Recipients[1].Addr != "b@y.test" ||
				m.Return != "HDRS" || m.EnvelopeID != "env-1" || m.Recipients[0].Notify[0] != "FAILURE" {
				t.Errorf("envelope not kept: %+v", m)
			}
			if !m.Arrival.Equal(clock.Now()) || m.Recipients[0].State != Pending {
				t.Errorf("arrival %v state %v", m.Arrival, m.Recipients[0].State)
			}
			if got := readBody(t, q, id); !bytes.Equal(got, body) {
				t.Errorf("body differs: %d bytes, want %d", len(got), len(body))
			}
		})
	}
}

type failingReader struct{ after int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.after <= 0 {
		return 0, errors.New("client vanished")
	}
	n := min(len(p), r.after)
	for i := range p[:n] {
		p[i] = 'x'
	}
	r.after -= n
	return n, nil
}

func TestEnqueueReadErrorStoresNothing(t *testing.T) {
	dir := t.TempDir()
	q := openTest(t, newClock(), dir, 1024)
	defer q.Close()
	for _, n := range []int{10, 5000} { // inline and spooled
		if _, err := q.Enqueue("", envelope("a@x.test"), &failingReader{after: n}); err == nil {
			t.Fatal("enqueue of a failing body succeeded")
		}
	}
	if n, _ := q.Count(); n != 0 {
		t.Errorf("%d messages stored after failed reads", n)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "spool")); len(entries) != 0 {
		t.Errorf("spool files left behind: %v", entries)
	}
}

func TestLeaseRecordRetire(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, err := q.Enqueue("", envelope("a@x.test", "b@x.test", "c@y.test"), strings.NewReader("hello\r\n"))
	if err != nil {
		t.Fatal(err)
	}

	leases, err := q.Lease(10, time.Minute)
	if err != nil || len(leases) != 1 || len(leases[0].Recipients) != 3 {
		t.Fatalf("first lease: %+v, %v", leases, err)
	}
	l := leases[0]
	if again, _ := q.Lease(10, time.Minute); len(again) != 0 {
		t.Fatalf("leased twice: %+v", again)
	}

	retry := clock.Now().Add(30 * time.Minute)
	m, err := q.Record(id, l.Seq, []Outcome{
		{Recipient: 0, Result: ResultDelivered, Reply: "250 ok"},
		{Recipient: 1, Result: ResultFailed, Reply: "550 no such user"},
		{Recipient: 2, Result: ResultDeferred, Reply: "451 try later", RetryAt: retry},
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Done() || m.Recipients[0].State != Delivered || m.Recipients[1].State != Failed ||
		m.Recipients[2].State != Pending || !m.Recipients[2].Due.Equal(retry) || m.Recipients[2].Attempts != 1 {
		t.Fatalf("after record: %+v", m.Recipients)
	}

	clock.Advance(29 * time.Minute)
	if early, _ := q.Lease(10, time.Minute); len(early) != 0 {
		t.Fatalf("deferred recipient leased before its time: %+v", early)
	}
	clock.Advance(time.Minute)
	leases, _ = q.Lease(10, time.Minute)
	if len(leases) != 1 || len(leases[0].Recipients) != 1 || leases[0].Recipients[0] != 2 {
		t.Fatalf("retry lease: %+v", leases)
	}
	m, err = q.Record(id, leases[0].Seq, []Outcome{{Recipient: 2, Result: ResultDelivered, Reply: "250 ok"}})
	if err != nil || !m.Done() {
		t.Fatalf("done=%v err=%v", m.Done(), err)
	}
	notice := Draft{Envelope: envelope("app@example.org"), Body: []byte("report")}
	if err := q.Retire(id, m.RetireSeq, notice); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("retired message still there: %v", err)
	}
	list, _ := q.List(Filter{})
	if len(list) != 1 || list[0].Recipients[0].Addr != "app@example.org" {
		t.Fatalf("notice not queued: %+v", list)
	}
	if got := readBody(t, q, list[0].ID); string(got) != "report" {
		t.Errorf("notice body %q", got)
	}
}

func TestExpiredLeaseIsGrantedAgainAndOldHolderLoses(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	first, _ := q.Lease(1, time.Minute)
	clock.Advance(61 * time.Second)
	second, _ := q.Lease(1, time.Minute)
	if len(second) != 1 || second[0].Seq == first[0].Seq {
		t.Fatalf("expired lease not re-granted: %+v", second)
	}
	_, err := q.Record(id, first[0].Seq, []Outcome{{Recipient: 0, Result: ResultFailed}})
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("stale holder recorded: %v", err)
	}
	if _, err := q.Record(id, second[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered}}); err != nil {
		t.Fatal(err)
	}
}

func TestFinishedMessageIsRetiredEvenIfWorkerDies(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	l, _ := q.Lease(1, time.Minute)
	if _, err := q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultFailed}}); err != nil {
		t.Fatal(err)
	}
	// The worker dies before Retire; once its lease runs out the retirement is due again.
	if now, _ := q.Lease(1, time.Minute); len(now) != 0 {
		t.Fatalf("retirement re-leased while the first lease holds: %+v", now)
	}
	clock.Advance(2 * time.Minute)
	again, _ := q.Lease(1, time.Minute)
	if len(again) != 1 || !again[0].Retire {
		t.Fatalf("no retirement lease: %+v", again)
	}
	if err := q.Retire(id, again[0].Seq); err != nil {
		t.Fatal(err)
	}
}

func TestHoldReleaseRetryDelete(t *testing.T) {
	clock := newClock()
	dir := t.TempDir()
	q := openTest(t, clock, dir, 16)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader(strings.Repeat("big ", 100)))
	if err := q.Hold(id); err != nil {
		t.Fatal(err)
	}
	if l, _ := q.Lease(10, time.Minute); len(l) != 0 {
		t.Fatal("held message leased")
	}
	if held, _ := q.List(Filter{State: "held"}); len(held) != 1 {
		t.Fatal("held filter")
	}
	q.Release(id)
	l, _ := q.Lease(10, time.Minute)
	if len(l) != 1 {
		t.Fatal("released message not leased")
	}
	q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultDeferred, RetryAt: clock.Now().Add(time.Hour)}})
	if d, _ := q.List(Filter{State: "deferred", RcptDomain: "x.test"}); len(d) != 1 {
		t.Fatal("deferred filter")
	}
	if err := q.RetryNow(id); err != nil {
		t.Fatal(err)
	}
	if l, _ := q.Lease(10, time.Minute); len(l) != 1 {
		t.Fatal("retry-now did not make it due")
	}
	if err := q.Delete(id); err != nil {
		t.Fatal(err)
	}
	if err := q.Hold(id); !errors.Is(err, ErrNotFound) {
		t.Errorf("hold of deleted message: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "spool")); len(entries) != 0 {
		t.Errorf("spool file kept after delete: %v", entries)
	}
}

func TestRecoverReturnsLeasesAndRemovesOrphans(t *testing.T) {
	clock, dir := newClock(), t.TempDir()
	q := openTest(t, clock, dir, 0)
	id, _ := q.Enqueue("", envelope("a@x.test", "b@x.test"), strings.NewReader("x"))
	q.Enqueue("", envelope("c@x.test"), strings.NewReader("y"))
	if l, _ := q.Lease(1, time.Hour); len(l) != 1 {
		t.Fatal("lease")
	}
	q.Close()
	os.WriteFile(filepath.Join(dir, "spool", "unacknowledged"), []byte("partial"), 0o600)

	q = openTest(t, clock, dir, 0)
	defer q.Close()
	rep, err := q.Recover()
	if err != nil {
		t.Fatal(err)
	}
	if rep.Messages != 2 || rep.Recipients != 3 || rep.OrphansRemoved != 1 || len(rep.MissingBodies) != 0 {
		t.Errorf("report %+v", rep)
	}
	if rep.LeasesReturned == 0 {
		t.Error("no leases returned")
	}
	leases, _ := q.Lease(10, time.Minute)
	if len(leases) != 2 {
		t.Fatalf("after recovery %d leases, want both messages due now", len(leases))
	}
	_ = id
}

func TestConcurrentEnqueueAllDurable(t *testing.T) {
	dir := t.TempDir()
	q := openTest(t, newClock(), dir, 0)
	var wg sync.WaitGroup
	ids := make(chan string, 1000)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				id, err := q.Enqueue("", envelope("a@x.test"), strings.NewReader(fmt.Sprint(w, i)))
				if err != nil {
					t.Error(err)
					return
				}
				ids <- id
			}
		}()
	}
	wg.Wait()
	close(ids)
	q.Close()
	q = openTest(t, newClock(), dir, 0)
	defer q.Close()
	seen := map[string]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
		if _, err := q.Get(id); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := q.Count(); n != 800 {
		t.Fatalf("count %d", n)
	}
}

// A failing write in a group must not take its neighbours down with it.
func TestGroupCommitIsolatesFailure(t *testing.T) {
	q := openTest(t, newClock(), t.TempDir(), 0)
	defer q.Close()
	var wg sync.WaitGroup
	errs := make([]error, 40)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = q.update(func(tx *bolt.Tx) error {
				if i%10 == 3 {
					return fmt.Errorf("refused %d", i)
				}
				return tx.Bucket(bucketBodies).Put([]byte(fmt.Sprint("k", i)), []byte("v"))
			})
		}()
	}
	wg.Wait()
	q.db.View(func(tx *bolt.Tx) error {
		for i, err := range errs {
			stored := tx.Bucket(bucketBodies).Get([]byte(fmt.Sprint("k", i))) != nil
			if want := i%10 != 3; (err == nil) != want || stored != want {
				t.Errorf("write %d: err=%v stored=%v", i, err, stored)
			}
		}
		return nil
	})
}

func TestOpenWhileLockedSaysSo(t *testing.T) {
	dir := t.TempDir()
	q := openTest(t, newClock(), dir, 0)
	defer q.Close()
	_, err := Open(filepath.Join(dir, "queue.db"), Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
}

func TestEnqueueAfterCloseIsAnError(t *testing.T) {
	q := openTest(t, newClock(), t.TempDir(), 0)
	q.Close()
	if _, err := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("enqueue after close: %v", err)
	}
}

func TestRecordRetiresQuietMessageAtOnce(t *testing.T) {
	clock, dir := newClock(), t.TempDir()
	q := openTest(t, clock, dir, 8)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("spooled body"))
	l, _ := q.Lease(1, time.Minute)
	quiet := func(m Message) bool { return m.Recipients[0].State == Delivered }
	m, err := q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered}}, quiet)
	if err != nil || !m.Done() || m.RetireSeq != 0 {
		t.Fatalf("record: %+v %v", m, err)
	}
	if _, err := q.Get(id); !errors.Is(err, ErrNotFound) {
		t.Fatal("quiet message not retired")
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "spool")); len(entries) != 0 {
		t.Fatal("spool file kept")
	}
	// A message that is not quiet stays for Retire.
	id, _ = q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	l, _ = q.Lease(1, time.Minute)
	m, _ = q.Record(id, l[0].Seq, []Outcome{{Recipient: 0, Result: ResultFailed}}, quiet)
	if m.RetireSeq == 0 {
		t.Fatal("failed message retired without its notice")
	}
}

func TestReturnedRecipientIsDueAtOnceWithoutAnAttempt(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test", "b@y.test"), strings.NewReader("x"))
	l, _ := q.Lease(1, time.Hour)
	m, err := q.Record(id, l[0].Seq, []Outcome{
		{Recipient: 0, Result: ResultDelivered, Reply: "250 ok"},
		{Recipient: 1, Result: ResultReturned, Journal: [][]byte{[]byte("not journalled")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	b := m.Recipients[1]
	if b.State != Pending || b.Attempts != 0 || !b.LastAttempt.IsZero() || !b.Due.Equal(clock.Now()) {
		t.Fatalf("returned recipient: %+v", b)
	}
	// Due now, not an hour from now when the lease would have run out.
	again, _ := q.Lease(1, time.Minute)
	if len(again) != 1 || len(again[0].Recipients) != 1 || again[0].Recipients[0] != 1 {
		t.Fatalf("returned recipient not leased again at once: %+v", again)
	}
	n := 0
	q.ReadJournal(time.Time{}, clock.Now().Add(time.Hour), func(JournalEntry) bool { n++; return true })
	if n != 0 {
		t.Fatalf("a returned recipient's journal entries were written: %d", n)
	}
}

func TestStatsFlushAndFailNow(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	fresh, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x"))
	clock.Advance(time.Minute)
	deferred, _ := q.Enqueue("", envelope("b@y.test", "c@y.test"), strings.NewReader("x"))
	held, _ := q.Enqueue("", envelope("d@z.test"), strings.NewReader("x"))
	q.Hold(held)
	for _, l := range mustLease(t, q, 2) {
		if l.Message.ID == deferred {
			q.Record(deferred, l.Seq, []Outcome{{Recipient: 0, Result: ResultDeferred, RetryAt: clock.Now().Add(time.Hour)},
				{Recipient: 1, Result: ResultDeferred, RetryAt: clock.Now().Add(time.Hour)}})
		} else {
			q.Record(l.Message.ID, l.Seq, []Outcome{{Recipient: 0, Result: ResultReturned}})
		}
	}
	st, err := q.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages["active"] != 1 || st.Messages["deferred"] != 1 || st.Messages["held"] != 1 || st.Recipients != 4 ||
		!st.Oldest.Equal(clock.Now().Add(-time.Minute)) {
		t.Fatalf("stats %+v", st)
	}
	if msgs, _ := q.List(Filter{State: "deferred"}); len(msgs) != 1 || msgs[0].ID != deferred {
		t.Fatalf("deferred filter: %+v", msgs)
	}
	if msgs, _ := q.List(Filter{ArrivedBefore: clock.Now().Add(-30 * time.Second)}); len(msgs) != 1 || msgs[0].ID != fresh {
		t.Fatalf("age filter: %+v", msgs)
	}
	if n, err := q.RetryAllNow(); err != nil || n != 1 {
		t.Fatalf("flush: %d %v", n, err)
	}
	if m, _ := q.Get(deferred); !m.Recipients[0].Due.Equal(clock.Now()) || !m.Recipients[1].Due.Equal(clock.Now()) {
		t.Fatalf("flush left %+v", m.Recipients)
	}
	l := mustLease(t, q, 10)
	n, err := q.FailNow(deferred, "5.0.0 bounced by the operator")
	if !errors.Is(err, ErrInFlight) || n != 0 {
		t.Fatalf("bounce while leased: %d %v", n, err)
	}
	for _, x := range l {
		q.Record(x.Message.ID, x.Seq, []Outcome{{Recipient: x.Recipients[0], Result: ResultReturned}})
		if len(x.Recipients) > 1 {
			q.Record(x.Message.ID, x.Seq, []Outcome{{Recipient: x.Recipients[1], Result: ResultReturned}})
		}
	}
	if n, err := q.FailNow(deferred, "5.0.0 bounced by the operator"); err != nil || n != 2 {
		t.Fatalf("bounce: %d %v", n, err)
	}
	m, _ := q.Get(deferred)
	if !m.Done() || m.Recipients[0].State != Failed || m.Recipients[0].LastReply != "5.0.0 bounced by the operator" {
		t.Fatalf("after bounce: %+v", m)
	}
	// A finished message is due for retirement (and its notices) at once.
	if r := mustLease(t, q, 10); len(r) == 0 || !r[0].Retire {
		t.Fatalf("bounced message not up for retirement: %+v", r)
	}
}

func mustLease(t *testing.T, q *Queue, n int) []Lease {
	t.Helper()
	l, err := q.Lease(n, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestBackupIsARestorableSnapshot(t *testing.T) {
	clock := newClock()
	dir := t.TempDir()
	q := openTest(t, clock, dir, 16) // bodies over 16 bytes are spooled
	defer q.Close()
	small, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("tiny"))
	big, _ := q.Enqueue("", envelope("b@x.test"), strings.NewReader(strings.Repeat("spooled body ", 10)))
	gone, _ := q.Enqueue("", envelope("c@x.test"), strings.NewReader(strings.Repeat("finished body ", 10)))
	// As if gone finished between the snapshot and the copy of its file.
	os.Remove(filepath.Join(dir, "spool", gone))
	backup := t.TempDir()
	root, err := os.OpenRoot(backup)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	rep, err := q.Backup(root)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Messages != 2 || rep.Spooled != 1 || rep.Gone != 1 {
		t.Fatalf("report %+v", rep)
	}
	if _, err := q.Backup(root); err == nil {
		t.Fatal("backup over a non-empty directory")
	}
	// Restore: the backup directory is a data_dir's queue.
	r := openTest(t, clock, backup, 16)
	defer r.Close()
	if rec, err := r.Recover(); err != nil || len(rec.MissingBodies) != 0 || rec.Messages != 2 {
		t.Fatalf("recover the backup: %+v %v", rec, err)
	}
	if got := readBody(t, r, small); string(got) != "tiny" {
		t.Fatalf("small body %q", got)
	}
	if got := readBody(t, r, big); string(got) != strings.Repeat("spooled body ", 10) {
		t.Fatalf("spooled body %q", got)
	}
	if _, err := r.Get(gone); !errors.Is(err, ErrNotFound) {
		t.Fatalf("finished message in the backup: %v", err)
	}
}
