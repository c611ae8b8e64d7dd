package queue

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// pagedQueue makes a queue of n messages in dir, deletes every third (so
// that its freelist lists pages), and returns the database's page size,
// the page of the freelist, the root of the messages bucket and that of its
// first leaf.
func pagedQueue(t *testing.T, dir string, n int) (path string, pageSize int64, freelist, root, leaf uint64) {
	t.Helper()
	q := openTest(t, newClock(), dir, 0)
	ids := enqueueInOneCommit(t, q, n)
	for i := 0; i < n; i += 3 {
		if err := q.Delete(ids[i]); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	path = filepath.Join(dir, "queue.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	pageSize = int64(db.Info().PageSize)
	db.View(func(tx *bolt.Tx) error {
		root = uint64(tx.Bucket(bucketMessages).Root())
		return nil
	})
	db.Close()
	raw := readPage(t, path, pageSize, root)
	if flags := binary.LittleEndian.Uint16(raw[8:]); flags != 0x01 {
		t.Fatalf("messages bucket root page %d has flags %#x, want a branch", root, flags)
	}
	leaf = binary.LittleEndian.Uint64(raw[16+8:])
	// Both meta pages name the same freelist page only by chance: take the
	// one of the newer transaction (txid at 64).
	var txid uint64
	for _, id := range []uint64{0, 1} {
		m := readPage(t, path, pageSize, id)
		if tid := binary.LittleEndian.Uint64(m[64:]); tid > txid {
			txid, freelist = tid, binary.LittleEndian.Uint64(m[48:])
		}
	}
	if fl := readPage(t, path, pageSize, freelist); binary.LittleEndian.Uint16(fl[8:]) != 0x10 || binary.LittleEndian.Uint16(fl[10:]) < 2 {
		t.Fatalf("freelist page %d: flags %#x, %d free pages; want a freelist of two or more", freelist,
			binary.LittleEndian.Uint16(fl[8:]), binary.LittleEndian.Uint16(fl[10:]))
	}
	return path, pageSize, freelist, root, leaf
}

func readPage(t *testing.T, path string, pageSize int64, id uint64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw := make([]byte, pageSize)
	if _, err := f.ReadAt(raw, int64(id)*pageSize); err != nil {
		t.Fatal(err)
	}
	return raw
}

func writePage(t *testing.T, path string, pageSize int64, id uint64, at int, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(id)*pageSize+int64(at)); err != nil {
		t.Fatal(err)
	}
}

func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }

// The start-up check reads the file, not the memory map, and must find on
// its own what bbolt's Check finds: each case damages a healthy queue in
// one way that Check reports and the page walk alone did not, and Open
// must refuse it, naming what is wrong.
func TestOpenRefusesWhatBboltsCheckRefuses(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, path string, pageSize int64, freelist, root, leaf uint64)
		want   string
	}{{
		name: "a page in use is also on the freelist",
		damage: func(t *testing.T, path string, pageSize int64, freelist, root, leaf uint64) {
			writePage(t, path, pageSize, freelist, 16, le64(leaf))
		},
		want: "reachable freed",
	}, {
		name: "a free page is not on the freelist",
		damage: func(t *testing.T, path string, pageSize int64, freelist, root, leaf uint64) {
			n := binary.LittleEndian.Uint16(readPage(t, path, pageSize, freelist)[10:])
			writePage(t, path, pageSize, freelist, 10, le16(n-1))
		},
		want: "unreachable unfreed",
	}, {
		name: "a page is freed twice",
		damage: func(t *testing.T, path string, pageSize int64, freelist, root, leaf uint64) {
			first := binary.LittleEndian.Uint64(readPage(t, path, pageSize, freelist)[16:])
			writePage(t, path, pageSize, freelist, 16+8, le64(first))
		},
		want: "already freed",
	}, {
		name: "a branch's keys are out of order",
		damage: func(t *testing.T, path string, pageSize int64, freelist, root, leaf uint64) {
			raw := readPage(t, path, pageSize, root)
			pos := binary.LittleEndian.Uint32(raw[16+16:]) // element 1: its key
			writePage(t, path, pageSize, root, 16+16+int(pos), []byte{0})
		},
		want: "is not after the key before it",
	}, {
		name: "a leaf holds a key beyond its parent's next key",
		damage: func(t *testing.T, path string, pageSize int64, freelist, root, leaf uint64) {
			raw := readPage(t, path, pageSize, leaf)
			last := int(binary.LittleEndian.Uint16(raw[10:])) - 1
			pos := binary.LittleEndian.Uint32(raw[16+16*last+4:])
			writePage(t, path, pageSize, leaf, 16+16*last+int(pos), []byte{0xff})
		},
		want: "is not before the key of the next page",
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path, pageSize, freelist, root, leaf := pagedQueue(t, dir, 300)
			c.damage(t, path, pageSize, freelist, root, leaf)
			q, err := Open(path, Options{})
			if err == nil {
				q.Close()
				t.Fatal("a damaged database was opened")
			}
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error: %v; want ErrDamaged saying %q", err, c.want)
			}
		})
	}
}

// A healthy queue, with pages freed and reused across many transactions,
// passes the check.
func TestOpenAcceptsAHealthyQueue(t *testing.T) {
	dir := t.TempDir()
	path, _, _, _, _ := pagedQueue(t, dir, 300)
	q, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
}
