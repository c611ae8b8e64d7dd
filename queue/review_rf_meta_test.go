package queue

import (
	"encoding/binary"
	"os"
	"testing"
)

// bbolt reads the freelist of the meta page with the higher transaction id
// only; the older meta's freelist page is free once no transaction reads
// it, and is rewritten with anything. A garbage header there (what a crash
// leaves as often as not) is no reason to refuse the file. Before, the
// start-up check read both metas' freelists and refused a sound queue as
// damaged ("freelist page N: ... free pages do not fit in its 892613427
// pages"); TestCrashLosesNoAcknowledgedMessage failed 6-7 times in 10.
func TestOpenIgnoresTheOlderMetasFreelist(t *testing.T) {
	dir := t.TempDir()
	path, pageSize, _, _, _ := pagedQueue(t, dir, 300)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	metas := [2][]byte{make([]byte, 80), make([]byte, 80)}
	for i := range metas {
		if _, err := f.ReadAt(metas[i], int64(i)*pageSize); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	older, newer := metas[0], metas[1]
	if binary.LittleEndian.Uint64(older[64:]) > binary.LittleEndian.Uint64(newer[64:]) {
		older, newer = newer, older
	}
	stale, live := binary.LittleEndian.Uint64(older[48:]), binary.LittleEndian.Uint64(newer[48:])
	if stale == live {
		t.Skip("both metas name the same freelist page")
	}
	writePage(t, path, pageSize, stale, 12, binary.LittleEndian.AppendUint32(nil, 892613427)) // a page count no file has
	q, err := openRecovered(path)
	if err != nil {
		t.Fatalf("a queue whose older meta's freelist page was reused was refused: %v", err)
	}
	defer q.Close()
	if ms, err := q.List(Filter{}); err != nil || len(ms) != 200 {
		t.Fatalf("messages: %d, %v; want the 200 queued", len(ms), err)
	}
}
