package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// exportSource fills a queue with one message of each kind an export must
// carry: recipients in every final and pending state with their attempts,
// replies and DSN parameters; a spooled body with a seal; a message held by
// the operator; one finished and awaiting its notices. It returns the IDs.
func exportSource(t *testing.T, q *Queue, clock *fakeClock) []string {
	t.Helper()
	var ids []string
	env := envelope("ok@a.test", "later@b.test", "no@c.test")
	env.RequireTLS, env.MessageID, env.UTF8, env.BodyType = true, "<m1@example.org>", true, "8BITMIME"
	env.Recipients[1].Original = "rfc822;later@b.test"
	env.Recipients[1].Notify = []string{"DELAY", "FAILURE"}
	id, err := q.Enqueue("", env, strings.NewReader("Subject: one\r\n\r\nhello\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, id)
	leases, err := q.Lease(10, time.Minute)
	if err != nil || len(leases) != 1 {
		t.Fatalf("lease: %v %v", leases, err)
	}
	_, err = q.Record(id, leases[0].Seq, []Outcome{
		{Recipient: 0, Result: ResultDelivered, Reply: "250 2.0.0 ok", Status: "2.0.0", Host: "mx.a.test"},
		{Recipient: 1, Result: ResultDeferred, Reply: "451 4.7.0 later", Status: "4.7.0", Host: "mx.b.test",
			RetryAt: clock.Now().Add(30 * time.Minute), DelayNotified: true},
		{Recipient: 2, Result: ResultFailed, Reply: "550 5.1.1 no", Status: "5.1.1", Host: "mx.c.test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	big := bytes.Repeat([]byte("0123456789abcdef"), 8<<10) // 128 KiB: spooled
	id, err = q.EnqueueSealed("", envelope("big@d.test"), bytes.NewReader(big), func() ([]byte, error) {
		return []byte("DKIM-Signature: v=1\r\n"), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, id)
	id, err = q.Enqueue("", envelope("held@e.test"), strings.NewReader("held\r\n"))
	if err == nil {
		err = q.Hold(id)
	}
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, id)
	// Finished, its notice not yet sent: its retirement lease ran out.
	id, err = q.Enqueue("", envelope("gone@f.test"), strings.NewReader("done\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, id)
	clock.Advance(time.Second)
	leases, err = q.Lease(10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Message.ID == id {
			if _, err := q.Record(id, l.Seq, []Outcome{{Recipient: 0, Result: ResultFailed, Reply: "550 5.1.2 no domain"}}); err != nil {
				t.Fatal(err)
			}
		} else {
			// Another worker's attempt ends: given back unattempted.
			q.Record(l.Message.ID, l.Seq, []Outcome{{Recipient: l.Recipients[0], Result: ResultReturned}})
		}
	}
	clock.Advance(5 * time.Minute) // every lease has run out
	return ids
}

// exportTo exports q into a new directory under parent, published by a
// rename as the command does, and returns its path.
func exportTo(t *testing.T, q *Queue, parent string, opts ExportOptions) (string, ExportReport, error) {
	t.Helper()
	tmp, err := os.MkdirTemp(parent, ".export-")
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(tmp)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	final := tmp + ".done"
	opts.Publish = func() error {
		if err := os.Rename(tmp, final); err != nil {
			return err
		}
		return syncDir(parent)
	}
	rep, err := q.Export(root, opts)
	return final, rep, err
}

func importFrom(t *testing.T, q *Queue, dir string, opts ImportOptions) (ImportReport, error) {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	return q.Import(root, opts)
}

// portable is a message as it must arrive: everything but this queue's
// own lease bookkeeping.
func portable(t *testing.T, m Message) string {
	t.Helper()
	m.LeaseSeq, m.RetireDue, m.RetireSeq, m.ExportHeld, m.BodyGone, m.Imports = 0, time.Time{}, 0, false, false, 0
	m.Recipients = slices.Clone(m.Recipients)
	for i := range m.Recipients {
		m.Recipients[i].Lease = 0
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestExportImportRoundTrip(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	ids := exportSource(t, a, clock)
	before, err := a.List(Filter{})
	if err != nil || len(before) != len(ids) {
		t.Fatalf("source: %d messages, %v", len(before), err)
	}
	bodies := map[string][]byte{}
	for _, id := range ids {
		bodies[id] = readBody(t, a, id)
	}
	dir, rep, err := exportTo(t, a, t.TempDir(), ExportOptions{Source: "a.test"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Messages != 4 || rep.Spooled != 1 || rep.Removed != 0 {
		t.Fatalf("export report: %+v", rep)
	}
	// The source keeps them, but no longer delivers or retires them.
	clock.Advance(time.Hour)
	if leases, err := a.Lease(10, time.Minute); err != nil || len(leases) != 0 {
		t.Fatalf("the source still leases exported messages: %v %v", leases, err)
	}
	if m, _ := a.Get(ids[0]); m.State() != "exported" {
		t.Fatalf("source state %q, want exported", m.State())
	}
	irep, err := importFrom(t, b, dir, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if irep.Imported != 4 || irep.Already != 0 || len(irep.Renamed) != 0 || irep.Source != "a.test" || irep.ExportID != rep.ExportID {
		t.Fatalf("import report: %+v", irep)
	}
	for _, want := range before {
		got, err := b.Get(want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if p, q := portable(t, got), portable(t, want); p != q {
			t.Errorf("message %s differs:\n got %s\nwant %s", want.ID, p, q)
		}
		if !bytes.Equal(readBody(t, b, want.ID), bodies[want.ID]) {
			t.Errorf("body of %s differs", want.ID)
		}
	}
	// Delivery goes on where it was: the deferred recipient and the
	// finished message's retirement are due; the held one is not.
	leases, err := b.Lease(10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var leased []string
	for _, l := range leases {
		leased = append(leased, l.Message.ID)
	}
	slices.Sort(leased)
	want := []string{ids[0], ids[1], ids[3]}
	slices.Sort(want)
	if !slices.Equal(leased, want) {
		t.Fatalf("leased on the new node: %v, want %v", leased, want)
	}
	// Release gives an exported message back to delivery on the source.
	if err := a.Release(ids[1]); err != nil {
		t.Fatal(err)
	}
	if leases, _ := a.Lease(10, time.Minute); len(leases) != 1 || leases[0].Message.ID != ids[1] {
		t.Fatalf("released message not leased: %v", leases)
	}
}

func TestExportRemove(t *testing.T) {
	clock := newClock()
	dir := t.TempDir()
	a := openTest(t, clock, dir, 64<<10)
	defer a.Close()
	exportSource(t, a, clock)
	_, rep, err := exportTo(t, a, t.TempDir(), ExportOptions{Remove: true})
	if err != nil || rep.Removed != 4 {
		t.Fatalf("export --remove: %+v %v", rep, err)
	}
	if n, _ := a.Count(); n != 0 {
		t.Fatalf("%d messages left in the source", n)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "spool")); len(left) != 0 {
		t.Fatalf("spool files left: %v", left)
	}
}

func TestImportTwiceAddsOnce(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	ids := exportSource(t, a, clock)
	// The new node already has a message under one of the IDs.
	if _, err := b.Enqueue(ids[1], envelope("own@b.test"), strings.NewReader("mine\r\n")); err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	dir, _, err := exportTo(t, a, parent, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := importFrom(t, b, dir, ImportOptions{})
	if err != nil || rep.Imported != 4 || len(rep.Renamed) != 1 || rep.Renamed[ids[1]] == "" {
		t.Fatalf("first import: %+v %v", rep, err)
	}
	renamed := rep.Renamed[ids[1]]
	if m, _ := b.Get(ids[1]); m.Recipients[0].Addr != "own@b.test" {
		t.Fatalf("the new node's own message was replaced: %+v", m)
	}
	if m, _ := b.Get(renamed); m.Recipients[0].Addr != "big@d.test" || !bytes.HasPrefix(readBody(t, b, renamed), []byte("DKIM-Signature")) {
		t.Fatalf("renamed import: %+v", m)
	}
	// The same export again, and a second export of the same messages
	// (still held on the source), after one of them was delivered and
	// retired on the new node: nothing is added.
	retireAll(t, b, clock, ids[0])
	again, err := importFrom(t, b, dir, ImportOptions{})
	if err != nil || again.Imported != 0 || again.Already != 4 {
		t.Fatalf("second import: %+v %v", again, err)
	}
	dir2, _, err := exportTo(t, a, parent, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again, err = importFrom(t, b, dir2, ImportOptions{}); err != nil || again.Imported != 0 || again.Already != 4 {
		t.Fatalf("import of a second export: %+v %v", again, err)
	}
	if n, _ := b.Count(); n != 4 { // its own, and three imported (one retired)
		t.Fatalf("%d messages on the new node, want 4", n)
	}
}

// retireAll finishes message id: every pending recipient delivered, then
// retired.
func retireAll(t *testing.T, q *Queue, clock *fakeClock, id string) {
	t.Helper()
	clock.Advance(time.Hour)
	leases, err := q.Lease(100, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if l.Message.ID != id {
			var outs []Outcome
			for _, i := range l.Recipients {
				outs = append(outs, Outcome{Recipient: i, Result: ResultReturned})
			}
			q.Record(l.Message.ID, l.Seq, outs)
			continue
		}
		var outs []Outcome
		for _, i := range l.Recipients {
			outs = append(outs, Outcome{Recipient: i, Result: ResultDelivered, Reply: "250 ok"})
		}
		m, err := q.Record(id, l.Seq, outs)
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Retire(id, m.RetireSeq); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("%s was not leased", id)
}

// reopen closes q as a killed process would leave it, and opens it again
// as the daemon does at start (Recover).
func reopen(t *testing.T, q *Queue, clock *fakeClock, dir string) *Queue {
	t.Helper()
	q.Close()
	q = openTest(t, clock, dir, 64<<10)
	if _, err := q.Recover(); err != nil {
		t.Fatal(err)
	}
	return q
}

// holdsOnce checks that every message of ids is in q exactly once (under
// its own ID or a new one), with its body.
func holdsOnce(t *testing.T, q *Queue, want map[string][]byte) {
	t.Helper()
	msgs, err := q.List(Filter{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, m := range msgs {
		seen[string(readBody(t, q, m.ID))]++
	}
	for id, body := range want {
		if seen[string(body)] != 1 {
			t.Errorf("message %s is there %d times", id, seen[string(body)])
		}
	}
	if len(msgs) != len(want) {
		t.Errorf("%d messages, want %d", len(msgs), len(want))
	}
}

func TestExportCrashAtEachStep(t *testing.T) {
	for _, step := range []string{"marked", "written", "manifest", "published", "removed"} {
		t.Run(step, func(t *testing.T) {
			clock := newClock()
			adir := t.TempDir()
			a := openTest(t, clock, adir, 64<<10)
			b := openTest(t, clock, t.TempDir(), 64<<10)
			defer b.Close()
			ids := exportSource(t, a, clock)
			bodies := map[string][]byte{}
			for _, id := range ids {
				bodies[id] = readBody(t, a, id)
			}
			parent := t.TempDir()
			dir, _, err := exportTo(t, a, parent, ExportOptions{Remove: true, crash: func(s string) bool { return s == step }})
			if !errors.Is(err, errExportCrash) {
				t.Fatalf("no crash: %v", err)
			}
			a = reopen(t, a, clock, adir)
			defer func() { a.Close() }()
			_, statErr := os.Stat(filepath.Join(dir, "manifest.json"))
			published := statErr == nil
			if published != (step == "published" || step == "removed") {
				t.Fatalf("published %v after a crash at %s", published, step)
			}
			left, _ := a.Count()
			if step == "removed" {
				if left != 0 {
					t.Fatalf("%d messages left", left)
				}
				if spool, _ := os.ReadDir(filepath.Join(adir, "spool")); len(spool) != 0 {
					t.Fatalf("the start after the crash left spool files: %v", spool)
				}
			} else if left != len(ids) {
				t.Fatalf("%d messages left of %d: the crash lost some", left, len(ids))
			}
			// The operator runs the export again, and imports what is there.
			dir2, rep, err := exportTo(t, a, parent, ExportOptions{Remove: true})
			if err != nil || rep.Messages != left || rep.Removed != left {
				t.Fatalf("export again: %+v %v", rep, err)
			}
			for _, d := range []string{dir, dir2} {
				if _, err := os.Stat(filepath.Join(d, "manifest.json")); err != nil {
					continue
				}
				if _, err := importFrom(t, b, d, ImportOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			holdsOnce(t, b, bodies)
		})
	}
}

func TestImportCrashAtEachStep(t *testing.T) {
	for _, step := range []string{"verified", "spooled", "committed"} {
		t.Run(step, func(t *testing.T) {
			clock := newClock()
			a := openTest(t, clock, t.TempDir(), 64<<10)
			defer a.Close()
			bdir := t.TempDir()
			// Every body spooled on the new node, so that "spooled" leaves a file.
			b := openTest(t, clock, bdir, 1)
			ids := exportSource(t, a, clock)
			bodies := map[string][]byte{}
			for _, id := range ids {
				bodies[id] = readBody(t, a, id)
			}
			dir, _, err := exportTo(t, a, t.TempDir(), ExportOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := importFrom(t, b, dir, ImportOptions{crash: func(s string) bool { return s == step }}); !errors.Is(err, errExportCrash) {
				t.Fatalf("no crash: %v", err)
			}
			b.Close()
			b, err = Open(filepath.Join(bdir, "queue.db"), Options{Clock: clock.Now, InlineLimit: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			rec, err := b.Recover()
			if err != nil {
				t.Fatal(err)
			}
			if step == "spooled" && rec.OrphansRemoved != 1 {
				t.Fatalf("the spool file of the uncommitted import: %+v", rec)
			}
			rep, err := importFrom(t, b, dir, ImportOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]int{"verified": 0, "spooled": 0, "committed": 1}[step]; rep.Already != want || rep.Imported != len(ids)-want {
				t.Fatalf("import after the crash: %+v", rep)
			}
			holdsOnce(t, b, bodies)
		})
	}
}

func TestImportRefusesDamagedExport(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	ids := exportSource(t, a, clock)
	dir, _, err := exportTo(t, a, t.TempDir(), ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// One bit of one body flips on the way.
	eml := filepath.Join(dir, "messages", ids[1]+".eml")
	data, err := os.ReadFile(eml)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 1
	os.WriteFile(eml, data, 0o600)
	_, err = importFrom(t, b, dir, ImportOptions{})
	if !errors.Is(err, ErrBadExport) || !strings.Contains(err.Error(), ids[1]+": body checksum mismatch") {
		t.Fatalf("damaged export: %v", err)
	}
	if n, _ := b.Count(); n != 0 {
		t.Fatalf("%d messages imported from a damaged export", n)
	}
	rep, err := importFrom(t, b, dir, ImportOptions{SkipBad: true})
	if err != nil || rep.Imported != 3 || len(rep.Bad) != 1 || rep.Bad[0].ID != ids[1] {
		t.Fatalf("--skip-bad: %+v %v", rep, err)
	}
	if _, err := b.Get(ids[1]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the damaged message was imported: %v", err)
	}
	// A damaged manifest is refused whole.
	man := filepath.Join(dir, "manifest.json")
	data, _ = os.ReadFile(man)
	os.WriteFile(man, bytes.Replace(data, []byte(`"size"`), []byte(`"Size"`), 1), 0o600)
	if _, err := importFrom(t, b, dir, ImportOptions{SkipBad: true}); !errors.Is(err, ErrBadExport) || !strings.Contains(err.Error(), "manifest.json has SHA-256") {
		t.Fatalf("damaged manifest: %v", err)
	}
}

func TestExportWaitsForAttemptsInFlight(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	id, err := a.Enqueue("", envelope("x@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := a.Enqueue("", envelope("y@a.test"), strings.NewReader("y\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	leases, err := a.Lease(1, time.Minute)
	if err != nil || len(leases) != 1 || leases[0].Message.ID != id {
		t.Fatalf("lease: %v %v", leases, err)
	}
	// Not waiting: refused, and the source is as it was.
	_, _, err = exportTo(t, a, t.TempDir(), ExportOptions{})
	if !errors.Is(err, ErrInFlight) || !strings.Contains(err.Error(), id) {
		t.Fatalf("export with an attempt in flight: %v", err)
	}
	if m, _ := a.Get(other); m.ExportHeld {
		t.Fatal("a refused export left the messages held")
	}
	// Waiting: the attempt ends (deferred) while the export waits, and
	// the message goes with its attempt counted.
	recorded := false
	_, rep, err := exportTo(t, a, t.TempDir(), ExportOptions{Wait: time.Minute, waiting: func(busy []string) {
		if !recorded {
			recorded = true
			if _, err := a.Record(id, leases[0].Seq, []Outcome{{Recipient: 0, Result: ResultDeferred, Reply: "451 4.4.1 later", RetryAt: clock.Now().Add(time.Hour)}}); err != nil {
				t.Error(err)
			}
		}
	}})
	if err != nil || rep.Messages != 2 || !recorded {
		t.Fatalf("export after waiting: %+v %v", rep, err)
	}
	// With no daemon running, a lease left in the file is void.
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	if _, err := b.Enqueue("", envelope("z@a.test"), strings.NewReader("z\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Lease(1, time.Hour); err != nil {
		t.Fatal(err)
	}
	dir, rep, err := exportTo(t, b, t.TempDir(), ExportOptions{LeasesVoid: true})
	if err != nil || rep.Messages != 1 {
		t.Fatalf("export with a void lease: %+v %v", rep, err)
	}
	c := openTest(t, clock, t.TempDir(), 64<<10)
	defer c.Close()
	if _, err := importFrom(t, c, dir, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	msgs, _ := c.List(Filter{})
	if len(msgs) != 1 || msgs[0].Recipients[0].State != Pending || msgs[0].Recipients[0].Lease != 0 {
		t.Fatalf("imported void lease: %+v", msgs)
	}
}

// Salvage keeps the record of imports: importing the same export after a
// salvage adds nothing.
func TestSalvageKeepsTheRecordOfImports(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	bdir := t.TempDir()
	b := openTest(t, clock, bdir, 64<<10)
	exportSource(t, a, clock)
	dir, _, err := exportTo(t, a, t.TempDir(), ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := importFrom(t, b, dir, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := Salvage(filepath.Join(bdir, "queue.db"), Options{}); err != nil {
		t.Fatal(err)
	}
	b = openTest(t, clock, bdir, 64<<10)
	defer b.Close()
	rep, err := importFrom(t, b, dir, ImportOptions{})
	if err != nil || rep.Imported != 0 || rep.Already != 4 {
		t.Fatalf("import after a salvage: %+v %v", rep, err)
	}
}

// An export imported back into the queue it came from, which still holds
// its messages, adds no second copy.
func TestImportIntoTheExportingQueue(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	ids := exportSource(t, a, clock)
	dir, _, err := exportTo(t, a, t.TempDir(), ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := importFrom(t, a, dir, ImportOptions{})
	if err != nil || rep.Imported != 0 || len(rep.StillHere) != len(ids) {
		t.Fatalf("import into the exporting queue: %+v %v", rep, err)
	}
	if n, _ := a.Count(); n != len(ids) {
		t.Fatalf("%d messages, want %d", n, len(ids))
	}
}
