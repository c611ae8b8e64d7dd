package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// damagedQueue makes a queue of n messages in dir, then breaks the header
// of one leaf page of its messages bucket, as a bad sector or a stray write
// would; it returns the IDs whose envelopes were on that page.
func damagedQueue(t *testing.T, dir string, n int) (all, onPage []string) {
	t.Helper()
	q := openTest(t, newClock(), dir, 0)
	all = enqueueInOneCommit(t, q, n)
	q.Close()
	path := filepath.Join(dir, "queue.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	pageSize := db.Info().PageSize
	var leaf uint64
	db.View(func(tx *bolt.Tx) error {
		root := uint64(tx.Bucket(bucketMessages).Root())
		raw := make([]byte, pageSize)
		f, _ := os.Open(path)
		defer f.Close()
		f.ReadAt(raw, int64(root)*int64(pageSize))
		if flags, count := binary.LittleEndian.Uint16(raw[8:]), binary.LittleEndian.Uint16(raw[10:]); flags != 0x01 || count < 3 {
			t.Fatalf("messages bucket root page %d: flags %#x, %d elements; want a branch over several leaves", root, flags, count)
		}
		// The second element of the branch (header 16 bytes, elements of
		// 16: pos, ksize, pgid) is a leaf in the middle of the bucket.
		leaf = binary.LittleEndian.Uint64(raw[16+16+8:])
		c := tx.Bucket(bucketMessages).Cursor()
		first := raw[16+16+binary.LittleEndian.Uint32(raw[16+16:]):][:binary.LittleEndian.Uint32(raw[16+16+4:])]
		next := raw[16+32+binary.LittleEndian.Uint32(raw[16+32:]):][:binary.LittleEndian.Uint32(raw[16+32+4:])]
		for k, _ := c.Seek(first); k != nil && string(k) < string(next); k, _ = c.Next() {
			onPage = append(onPage, string(k))
		}
		return nil
	})
	db.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xad, 0xde}, int64(leaf)*int64(pageSize)+8); err != nil { // the page's flags
		t.Fatal(err)
	}
	if len(onPage) == 0 {
		t.Fatal("no message on the damaged page")
	}
	return all, onPage
}

// A damaged page stops Open with a message naming the file and what to do,
// rather than a panic later in the committer.
func TestOpenRefusesADamagedDatabase(t *testing.T) {
	dir := t.TempDir()
	damagedQueue(t, dir, 300)
	q, err := Open(filepath.Join(dir, "queue.db"), Options{})
	if err == nil {
		q.Close()
		t.Fatal("a damaged database was opened")
	}
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), filepath.Join(dir, "queue.db")) ||
		!strings.Contains(err.Error(), "postern queue salvage") || !strings.Contains(err.Error(), "docs/operations.md") {
		t.Fatalf("error: %v", err)
	}
}

// A damaged page met while writing (the check was skipped, or the damage
// came later) fails that write and every later one; the process lives on.
func TestDamageFoundWhileWritingFailsWritesNotTheProcess(t *testing.T) {
	dir := t.TempDir()
	_, onPage := damagedQueue(t, dir, 300)
	q, err := Open(filepath.Join(dir, "queue.db"), Options{CheckTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Enqueue(onPage[0], envelope("a@x.test"), strings.NewReader("x")); !errors.Is(err, ErrDamaged) {
		t.Fatalf("write through the damaged page: %v", err)
	}
	if _, err := q.Enqueue("", envelope("a@x.test"), strings.NewReader("x")); !errors.Is(err, ErrDamaged) {
		t.Fatalf("next write: %v", err)
	}
}

// Salvage keeps every readable message, names those it could not read, and
// leaves a database that opens and checks clean.
func TestSalvageKeepsWhatCanBeRead(t *testing.T) {
	dir := t.TempDir()
	all, onPage := damagedQueue(t, dir, 300)
	path := filepath.Join(dir, "queue.db")
	rep, err := Salvage(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Messages != len(all)-len(onPage) || !slices.Equal(rep.Lost, onPage) || len(rep.BodiesLost) != 0 || rep.Unreadable == 0 {
		t.Fatalf("report: %d messages, lost %v (want %v), bodies lost %v, unreadable %d",
			rep.Messages, rep.Lost, onPage, rep.BodiesLost, rep.Unreadable)
	}
	if _, err := os.Stat(rep.Damaged); err != nil {
		t.Fatalf("damaged file not kept: %v", err)
	}
	q := openTest(t, newClock(), dir, 0)
	defer q.Close()
	if n, _ := q.Count(); n != rep.Messages {
		t.Fatalf("%d messages in the new database, report says %d", n, rep.Messages)
	}
	if got := string(readBody(t, q, all[0])); got != strings.Repeat("body ", 40) {
		t.Fatalf("salvaged body: %q", got)
	}
	if leases, err := q.Lease(1000, 0); err != nil || len(leases) != rep.Messages {
		t.Fatalf("salvaged messages not scheduled: %d leases, %v", len(leases), err)
	}
}

// enqueueInOneCommit queues n small messages in one commit (a test need
// not wait for n fsyncs) and returns their IDs.
func enqueueInOneCommit(t *testing.T, q *Queue, n int) []string {
	t.Helper()
	var ids []string
	err := q.update(func(tx *bolt.Tx) error {
		ids = ids[:0]
		for i := 0; i < n; i++ {
			m, inline, err := q.prepare(q.NewID(), envelope(fmt.Sprintf("rcpt%d@x.test", i)), strings.NewReader(strings.Repeat("body ", 40)))
			if err != nil {
				return err
			}
			if err := putNew(tx, m, inline); err != nil {
				return err
			}
			ids = append(ids, m.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}
