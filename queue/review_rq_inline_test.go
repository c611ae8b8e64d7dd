package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// inlineQueue makes a queue with a few messages, small enough that its
// buckets live inline in the root bucket's leaf, and returns the page size,
// that leaf, and where the value of bucket name starts on it and its size.
func inlineQueue(t *testing.T, dir string, name []byte) (path string, pageSize int64, leaf uint64, elem int, value int, vsize uint32) {
	t.Helper()
	q := openTest(t, newClock(), dir, 0)
	for i := 0; i < 2; i++ {
		if _, err := q.Enqueue("", envelope(fmt.Sprintf("r%d@x.test", i)), strings.NewReader("body")); err != nil {
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
		leaf = uint64(tx.Cursor().Bucket().Root())
		if tx.Bucket(name).Root() != 0 {
			t.Fatalf("bucket %s is not inline", name)
		}
		return nil
	})
	db.Close()
	raw := readPage(t, path, pageSize, leaf)
	for e := 0; e < int(binary.LittleEndian.Uint16(raw[10:])); e++ {
		el := raw[16+16*e:]
		pos, ksize := binary.LittleEndian.Uint32(el[4:]), binary.LittleEndian.Uint32(el[8:])
		if bytes.Equal(el[pos:][:ksize], name) {
			return path, pageSize, leaf, e, 16 + 16*e + int(pos+ksize), binary.LittleEndian.Uint32(el[12:])
		}
	}
	t.Fatalf("no bucket %s on the root leaf %d", name, leaf)
	return
}

// openRecovered is Open that reports a panic as an error (bbolt panics on
// what the check let through).
func openRecovered(path string) (q *Queue, err error) {
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("Open panicked: %v", r)
		}
	}()
	return Open(path, Options{})
}

// An inline bucket (root page 0) keeps its page inside its value, after
// the 16-byte bucket header. bbolt's Check opens every bucket, and refuses
// one whose value has no room for that page; the walk skipped inline
// buckets, and Open then panicked opening the bucket (outside any recover:
// the process ends with a trace, not ErrDamaged and its advice). The
// inline page itself must hold what it claims, as any page must.
func TestOpenRefusesADamagedInlineBucket(t *testing.T) {
	cases := []struct {
		name   string
		bucket []byte
		damage func(t *testing.T, path string, pageSize int64, leaf uint64, elem, value int, vsize uint32)
		want   string
	}{{
		name:   "value too short for its page (bbolt's Check refuses it)",
		bucket: bucketSchedule,
		damage: func(t *testing.T, path string, pageSize int64, leaf uint64, elem, value int, vsize uint32) {
			writePage(t, path, pageSize, leaf, 16+16*elem+12, binary.LittleEndian.AppendUint32(nil, 16))
		},
		want: "inline bucket",
	}, {
		name:   "the inline page claims more elements than its value holds",
		bucket: bucketMessages,
		damage: func(t *testing.T, path string, pageSize int64, leaf uint64, elem, value int, vsize uint32) {
			writePage(t, path, pageSize, leaf, value+16+10, le16(200))
		},
		want: "inline bucket",
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, pageSize, leaf, elem, value, vsize := inlineQueue(t, t.TempDir(), c.bucket)
			c.damage(t, path, pageSize, leaf, elem, value, vsize)
			q, err := openRecovered(path)
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
