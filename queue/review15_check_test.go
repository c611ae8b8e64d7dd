package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// pointerDamagedQueue makes a queue of n messages in dir, then overwrites
// the page number of one child of its messages bucket's root branch with one
// far past the end of the file: a stray write or a bad sector in a branch
// page, rather than in a page header.
func pointerDamagedQueue(t *testing.T, dir string, n int) (onPage string) {
	t.Helper()
	return pointerDamagedQueueTo(t, dir, n, 1, func(uint64) uint64 { return 1 << 28 }) // 1 TiB into the file with 4 KiB pages
}

// pointerDamagedQueueTo is pointerDamagedQueue with the damaged element
// (elem, 0 or 1) and page number (to, given the root branch's own) chosen.
func pointerDamagedQueueTo(t *testing.T, dir string, n, elem int, to func(root uint64) uint64) (onPage string) {
	t.Helper()
	q := openTest(t, newClock(), dir, 0)
	err := q.update(func(tx *bolt.Tx) error {
		for i := 0; i < n; i++ {
			m, inline, err := q.prepare(q.NewID(), envelope(fmt.Sprintf("rcpt%d@x.test", i)), strings.NewReader(strings.Repeat("body ", 40)))
			if err != nil {
				return err
			}
			if err := putNew(tx, m, inline); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	path := filepath.Join(dir, "queue.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	pageSize := int64(db.Info().PageSize)
	var root int64
	db.View(func(tx *bolt.Tx) error { root = int64(tx.Bucket(bucketMessages).Root()); return nil })
	db.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw := make([]byte, pageSize)
	f.ReadAt(raw, root*pageSize)
	if flags := binary.LittleEndian.Uint16(raw[8:]); flags != 0x01 {
		t.Fatalf("messages bucket root page %d has flags %#x, want a branch", root, flags)
	}
	// Branch element elem (header 16 bytes, elements of 16: pos, ksize, pgid).
	var pgid [8]byte
	binary.LittleEndian.PutUint64(pgid[:], to(uint64(root)))
	at := 16 + 16*elem
	if _, err := f.WriteAt(pgid[:], root*pageSize+int64(at)+8); err != nil {
		t.Fatal(err)
	}
	// The element's key, the first ID on the page it pointed to.
	pos, ksize := binary.LittleEndian.Uint32(raw[at:]), binary.LittleEndian.Uint32(raw[at+4:])
	return string(raw[uint32(at)+pos:][:ksize])
}

// The start-up check must refuse a database whose branch page points past
// the end of the file, not kill the process: bbolt's Check reads such a page
// through the memory map on a goroutine of its own, where the fault is fatal
// ("unexpected fault address"), so the daemon dies at start without the
// advice ErrDamaged carries. The open runs in a child process, which is the
// only way to observe a fatal fault.
func TestOpenRefusesABranchPointingPastTheFile(t *testing.T) {
	if dir := os.Getenv("POSTERN_REVIEW15_CHILD"); dir != "" {
		q, err := Open(filepath.Join(dir, "queue.db"), Options{})
		if err == nil {
			q.Close()
			fmt.Println("RESULT: opened")
			return
		}
		fmt.Printf("RESULT: damaged=%v: %v\n", errors.Is(err, ErrDamaged), err)
		return
	}
	dir := t.TempDir()
	pointerDamagedQueue(t, dir, 300)
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenRefusesABranchPointingPastTheFile$", "-test.count=1")
	cmd.Env = append(os.Environ(), "POSTERN_REVIEW15_CHILD="+dir)
	out, err := cmd.CombinedOutput()
	text := string(out)
	if i := strings.Index(text, "goroutine "); i > 0 && os.Getenv("R15_FULL") == "" {
		text = text[:i] // the stack dump says nothing more
	}
	if err != nil || !strings.Contains(text, "RESULT: damaged=true") {
		t.Fatalf("opening a queue.db with a branch pointing past its end: child %v:\n%s", err, text)
	}
}

// A damaged branch met after the start (the check was off, or the damage
// came later) must fail the write, as a damaged page header does
// (TestDamageFoundWhileWritingFailsWritesNotTheProcess), not kill the
// process: the committer recovers bbolt's panics, but a fault on the memory
// map is fatal unless the goroutine asked for panics on faults.
func TestDamagedBranchMetWhileWritingFailsTheWriteNotTheProcess(t *testing.T) {
	if dir := os.Getenv("POSTERN_REVIEW15_WRITER"); dir != "" {
		q, err := Open(filepath.Join(dir, "queue.db"), Options{CheckTimeout: -1})
		if err != nil {
			fmt.Printf("RESULT: open: %v\n", err)
			return
		}
		defer q.Close()
		_, err = q.Enqueue(os.Getenv("POSTERN_REVIEW15_ID"), envelope("a@x.test"), strings.NewReader("x"))
		fmt.Printf("RESULT: damaged=%v: %v\n", errors.Is(err, ErrDamaged), err)
		return
	}
	dir := t.TempDir()
	id := pointerDamagedQueue(t, dir, 300)
	cmd := exec.Command(os.Args[0], "-test.run=^TestDamagedBranchMetWhileWritingFailsTheWriteNotTheProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "POSTERN_REVIEW15_WRITER="+dir, "POSTERN_REVIEW15_ID="+id)
	out, err := cmd.CombinedOutput()
	text := string(out)
	if i := strings.Index(text, "goroutine "); i > 0 && os.Getenv("R15_FULL") == "" {
		text = text[:i]
	}
	if err != nil || !strings.Contains(text, "RESULT: damaged=true") {
		t.Fatalf("a write through a branch pointing past the end of queue.db: child %v:\n%s", err, text)
	}
}

// A damaged page met by a read after the start (the check was off, or the
// damage came later) must fail that read with ErrDamaged, as a write does:
// reads run on the caller's goroutine (a delivery worker reading a body, the
// admin API listing the queue), where bbolt's panic ends the process.
func TestDamageFoundWhileReadingFailsTheReadNotTheProcess(t *testing.T) {
	dir := t.TempDir()
	_, onPage := damagedQueue(t, dir, 300)
	q, err := Open(filepath.Join(dir, "queue.db"), Options{CheckTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for name, read := range map[string]func() error{
		"Get":   func() error { _, err := q.Get(onPage[0]); return err },
		"List":  func() error { _, err := q.List(Filter{}); return err },
		"Stats": func() error { _, err := q.Stats(); return err },
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s through a damaged page panicked (in a worker or handler goroutine the process ends): %v", name, r)
				}
			}()
			if err := read(); !errors.Is(err, ErrDamaged) {
				t.Errorf("%s through a damaged page: %v, want ErrDamaged", name, err)
			}
		}()
	}
}
