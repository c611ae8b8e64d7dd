package queue

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"path/filepath"
	"strings"
	"testing"
)

// A meta page whose checksum holds (bbolt accepts it) may still claim a
// high water mark far past the end of the file. The check sized its page
// sets by that mark before reading a page: 2^40 pages asked for 128 GiB at
// once. It must refuse the file, saying so, without allocating for pages
// that are not there.
func TestOpenRefusesAHighWaterMarkPastTheFile(t *testing.T) {
	dir := t.TempDir()
	q := openTest(t, newClock(), dir, 0)
	if _, err := q.Enqueue("", envelope("a@x.test"), strings.NewReader("body")); err != nil {
		t.Fatal(err)
	}
	q.Close()
	path := filepath.Join(dir, "queue.db")
	pageSize := int64(4096)
	if ps := binary.LittleEndian.Uint32(readPage(t, path, pageSize, 0)[24:]); int64(ps) != pageSize {
		pageSize = int64(ps)
	}
	// Both meta pages: whichever bbolt takes claims the mark.
	for _, id := range []uint64{0, 1} {
		m := readPage(t, path, pageSize, id)
		binary.LittleEndian.PutUint64(m[56:], 1<<40)
		sum := fnv.New64a()
		sum.Write(m[16:72])
		binary.LittleEndian.PutUint64(m[72:], sum.Sum64())
		writePage(t, path, pageSize, id, 0, m[:80])
	}
	q, err := openRecovered(path)
	if err == nil {
		q.Close()
		t.Fatal("a database whose meta page claims 2^40 pages was opened")
	}
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "pages") {
		t.Fatalf("error: %v; want ErrDamaged naming the pages", err)
	}
}
