package queue

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Review 20: a message held by an earlier, complete export (without
// --remove: the operator is to delete it once imported) must stay held when
// a later export fails. Giving it back to delivery here while the first
// export is imported elsewhere delivers it twice.
func TestReview20FailedExportKeepsEarlierExportHeld(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	first, err := a.Enqueue("", envelope("x@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, rep, err := exportTo(t, a, t.TempDir(), ExportOptions{}); err != nil || rep.Messages != 1 {
		t.Fatalf("first export: %+v %v", rep, err)
	}
	// A message that arrived since is being attempted: the second export
	// is refused (ErrInFlight), as it should be.
	late, err := a.Enqueue("", envelope("y@a.test"), strings.NewReader("y\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if leases, err := a.Lease(10, time.Minute); err != nil || len(leases) != 1 || leases[0].Message.ID != late {
		t.Fatalf("lease: %v %v", leases, err)
	}
	if _, _, err := exportTo(t, a, t.TempDir(), ExportOptions{}); !errors.Is(err, ErrInFlight) {
		t.Fatalf("second export: %v, want ErrInFlight", err)
	}
	m, err := a.Get(first)
	if err != nil {
		t.Fatal(err)
	}
	if !m.ExportHeld {
		t.Fatalf("message %s of the first, complete export is %q after a refused second export: "+
			"it will be delivered here and by the node that imports the first export", first, m.State())
	}
}

// Review 20: a hand-over back and forth (A to B for maintenance, back to
// A, and later to B again) must bring a message still queued to B the
// second time: the record of B's first import must not make B skip it
// while A, exporting with Remove, has deleted it.
func TestReview20MessageComingBackIsImported(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	id, err := a.Enqueue("", envelope("slow@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	move := func(from, to *Queue, what string) ImportReport {
		t.Helper()
		dir, rep, err := exportTo(t, from, t.TempDir(), ExportOptions{Remove: true})
		if err != nil || rep.Removed != 1 {
			t.Fatalf("%s: export: %+v %v", what, rep, err)
		}
		irep, err := importFrom(t, to, dir, ImportOptions{})
		if err != nil {
			t.Fatalf("%s: import: %v", what, err)
		}
		return irep
	}
	move(a, b, "A to B")
	move(b, a, "B back to A")
	irep := move(a, b, "A to B again")
	if irep.Imported != 1 {
		n, _ := a.Count()
		m, err := b.Get(id)
		t.Fatalf("A to B again: %+v; the message is on A %d times, on B: %v (%v): LOST", irep, n, m.ID, err)
	}
}

// Review 20: a recipient whose lease ran out while the daemon runs may
// still be in the hands of a slow worker; the queue keeps a delivery it
// reports late (Record, "a delivery is a fact"). Export writes it as
// pending, and the node that imports it sends it again.
func TestReview20LapsedLeaseDeliveredAfterExport(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	id, err := a.Enqueue("", envelope("x@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	leases, err := a.Lease(1, time.Minute)
	if err != nil || len(leases) != 1 {
		t.Fatalf("lease: %v %v", leases, err)
	}
	clock.Advance(2 * time.Minute) // the worker is slow: its lease ran out
	dir, rep, err := exportTo(t, a, t.TempDir(), ExportOptions{Remove: true})
	if err != nil {
		// Refusing (ErrInFlight) is a correct answer too.
		if errors.Is(err, ErrInFlight) {
			return
		}
		t.Fatal(err)
	}
	// The slow worker's SMTP transaction ends: 250.
	if _, err := a.Record(id, leases[0].Seq, []Outcome{{Recipient: 0, Result: ResultDelivered, Reply: "250 ok"}}); err != nil &&
		!errors.Is(err, ErrLeaseLost) && !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := importFrom(t, b, dir, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	again, err := b.Lease(10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range again {
		if !l.Retire {
			t.Fatalf("export %+v: recipient delivered by the source's worker is attempted again on the new node: %+v",
				rep, l.Message.Recipients)
		}
	}
}

// Review 20: "queue release ID" while an export with Remove is written
// gives the message back to delivery here, though it is in the export: it
// is then delivered by both nodes. Export must say so, not report it among
// the messages "kept here, still held for the export" (Changed).
func TestReview20ReleaseDuringExportRemoveIsReported(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	id, err := a.Enqueue("", envelope("x@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, rep, err := exportTo(t, a, t.TempDir(), ExportOptions{Remove: true, crash: func(step string) bool {
		if step == "published" {
			if err := a.Release(id); err != nil { // the operator, meanwhile
				t.Error(err)
			}
		}
		return false
	}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := a.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Changed {
		if c == id && !m.ExportHeld {
			t.Fatalf("export %+v reports %s as kept here and held for the export, but it is %q here: "+
				"it is delivered here and by the node that imports the export", rep, id, m.State())
		}
	}
	if !m.ExportHeld && !slices.Contains(rep.Released, id) {
		t.Fatalf("export %+v: %s is in the export and was given back to delivery here, unreported", rep, id)
	}
}

// Review 20: a finished message whose retirement lease ran out is exported
// (its notice is the new node's to send). A late Retire by the worker that
// held that lease must not also retire it here, with its notice: the
// sender would get the same delivery status notification from both nodes.
func TestReview20LapsedRetireAfterExport(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	id, err := a.Enqueue("", envelope("no@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	leases, err := a.Lease(1, time.Minute)
	if err != nil || len(leases) != 1 {
		t.Fatalf("lease: %v %v", leases, err)
	}
	after, err := a.Record(id, leases[0].Seq, []Outcome{{Recipient: 0, Result: ResultFailed, Reply: "550 5.1.1 no"}})
	if err != nil || after.RetireSeq == 0 {
		t.Fatalf("record: %+v %v", after, err)
	}
	clock.Advance(5 * time.Minute) // the retirement lease runs out
	_, rep, err := exportTo(t, a, t.TempDir(), ExportOptions{})
	if err != nil || rep.Messages != 1 {
		t.Fatalf("export: %+v %v", rep, err)
	}
	// The worker's Retire comes late, with the bounce.
	dsn := Draft{Envelope: Envelope{From: "", Recipients: []Recipient{{Addr: "app@example.org"}}}, Body: []byte("bounce\r\n")}
	err = a.Retire(id, after.RetireSeq, dsn)
	if n, _ := a.Count(); err == nil || n != 1 {
		t.Fatalf("late Retire of an exported message: %v; %d messages here (the bounce queued here, and the export "+
			"makes the new node send it too)", err, n)
	}
}

// Review 20: two exports at once (a second operator, or a retry from
// another terminal while the first one waits): the first fails after the
// second completed, and must not give back to delivery the messages the
// second export holds.
func TestReview20ConcurrentExports(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	id, err := a.Enqueue("", envelope("x@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	var second error
	var secondRep ExportReport
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	_, err = a.Export(root, ExportOptions{
		crash: func(step string) bool {
			if step == "manifest" {
				_, secondRep, second = exportTo(t, a, t.TempDir(), ExportOptions{})
			}
			return false
		},
		Publish: func() error { return errors.New("disk full") },
	})
	if err == nil {
		t.Fatal("first export succeeded")
	}
	m, gerr := a.Get(id)
	if gerr != nil {
		t.Fatal(gerr)
	}
	if second == nil && secondRep.Messages == 1 && !m.ExportHeld {
		t.Fatalf("the second export (%+v) completed with %s, and the first one's failure gave it back to delivery "+
			"here (%q): delivered by both nodes", secondRep, id, m.State())
	}
}

// Review 20: a FIFO in an export (left there by someone when the
// directory was still open to them) must not block the import forever:
// it is refused as not a regular file.
func TestReview20ImportFIFODoesNotHang(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	id, err := a.Enqueue("", envelope("x@a.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := exportTo(t, a, t.TempDir(), ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	body := filepath.Join(dir, "messages", id+".eml")
	if err := os.Remove(body); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(body, 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := importFrom(t, b, dir, ImportOptions{})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("import of an export whose body is a FIFO succeeded")
		}
	case <-time.After(10 * time.Second):
		// Unblock the import's open, so that the goroutine ends.
		if f, err := os.OpenFile(body, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
		t.Fatal("import blocked opening a FIFO in the export")
	}
}

// Review 20: node A exports without --remove and keeps its copy, held (the
// operator has not deleted it yet); node B imports it, delivers one of the
// two recipients, and later hands its queue back to A. A must take B's
// copy, with the delivery B made, not keep its stale one and offer it
// back to delivery (Release), which sends the delivered recipient again.
func TestReview20MessageBackToANodeStillHoldingAStaleCopy(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	b := openTest(t, clock, t.TempDir(), 64<<10)
	defer b.Close()
	id, err := a.Enqueue("", envelope("one@a.test", "two@b.test"), strings.NewReader("x\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := exportTo(t, a, t.TempDir(), ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := importFrom(t, b, dir, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	leases, err := b.Lease(1, time.Minute)
	if err != nil || len(leases) != 1 {
		t.Fatalf("lease on B: %v %v", leases, err)
	}
	if _, err := b.Record(id, leases[0].Seq, []Outcome{
		{Recipient: 0, Result: ResultDelivered, Reply: "250 ok"},
		{Recipient: 1, Result: ResultDeferred, Reply: "451 later", RetryAt: clock.Now().Add(time.Hour)},
	}); err != nil {
		t.Fatal(err)
	}
	back, _, err := exportTo(t, b, t.TempDir(), ExportOptions{Remove: true})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := importFrom(t, a, back, ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := a.List(Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Recipients[0].State != Delivered {
			t.Errorf("A holds %s (%q) with %s %s, which B delivered (import %+v): released or not, "+
				"recipient two is not sent without recipient one again", m.ID, m.State(), m.Recipients[0].Addr, m.Recipients[0].State, rep)
		}
	}
	if len(msgs) != 1 {
		t.Errorf("A holds %d copies of the message, want 1", len(msgs))
	}
	// A's own first export, imported into A by mistake, adds nothing.
	if rep, err := importFrom(t, a, dir, ImportOptions{}); err != nil || rep.Imported != 0 {
		t.Errorf("A's own stale export imported into A: %+v %v", rep, err)
	}
}

// Review 20 (held): an export's files attacked after the checks or in the
// manifest: a body changed between its check and its copy (inline and
// spooled), a body that is a symbolic link to a file outside, an ID that
// walks out of the directory. None is imported.
func TestReview20ImportAttacksHeld(t *testing.T) {
	clock := newClock()
	a := openTest(t, clock, t.TempDir(), 64<<10)
	defer a.Close()
	small, err := a.Enqueue("", envelope("x@a.test"), strings.NewReader("small\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	big, err := a.Enqueue("", envelope("y@a.test"), strings.NewReader(strings.Repeat("b", 100<<10)))
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := exportTo(t, a, t.TempDir(), ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	flip := func(id string) {
		p := filepath.Join(dir, "messages", id+".eml")
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[0] ^= 1
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("changed after the check", func(t *testing.T) {
		b := openTest(t, clock, t.TempDir(), 64<<10)
		defer b.Close()
		rep, err := importFrom(t, b, dir, ImportOptions{crash: func(step string) bool {
			if step == "verified" {
				flip(small)
				flip(big)
			}
			return false
		}})
		defer flip(small)
		defer flip(big)
		if err == nil || rep.Imported != 0 || len(rep.Bad) != 2 {
			t.Fatalf("import of bodies changed after their check: %+v %v", rep, err)
		}
		if n, _ := b.Count(); n != 0 {
			t.Fatalf("%d messages imported", n)
		}
		if left, _ := os.ReadDir(filepath.Join(filepath.Dir(b.path), "spool")); len(left) != 0 {
			t.Fatalf("spool files left: %v", left)
		}
	})
	t.Run("symbolic link", func(t *testing.T) {
		b := openTest(t, clock, t.TempDir(), 64<<10)
		defer b.Close()
		p := filepath.Join(dir, "messages", small+".eml")
		data, _ := os.ReadFile(p)
		outside := filepath.Join(t.TempDir(), "outside")
		os.WriteFile(outside, data, 0o600)
		os.Rename(p, p+".orig")
		defer os.Rename(p+".orig", p)
		if err := os.Symlink(outside, p); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(p)
		if rep, err := importFrom(t, b, dir, ImportOptions{}); err == nil || rep.Imported != 0 {
			t.Fatalf("import through a symbolic link: %+v %v", rep, err)
		}
	})
}
