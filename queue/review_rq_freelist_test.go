package queue

import (
	"errors"
	"testing"
)

// bbolt's Open copies the freelist before anything checks it: a freelist
// page whose count (the first element when the header's count is 0xFFFF)
// claims 2^32 pages made Open ask for 32 GiB and die with "fatal error:
// out of memory", a crash no recover catches. The count must be weighed
// against the file before bbolt reads it.
func TestOpenRefusesAFreelistLargerThanTheFile(t *testing.T) {
	dir := t.TempDir()
	path, pageSize, freelist, _, _ := pagedQueue(t, dir, 300)
	writePage(t, path, pageSize, freelist, 10, le16(0xFFFF))
	writePage(t, path, pageSize, freelist, 16, le64(1<<32))
	q, err := openRecovered(path)
	if err == nil {
		q.Close()
		t.Fatal("a database whose freelist claims 2^32 pages was opened")
	}
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("error: %v; want ErrDamaged", err)
	}
}

// Salvage opens the file read only, where bbolt does not read the
// freelist: a freelist damaged so is no reason to refuse the salvage.
func TestSalvageIgnoresAFreelistLargerThanTheFile(t *testing.T) {
	dir := t.TempDir()
	path, pageSize, freelist, _, _ := pagedQueue(t, dir, 300)
	writePage(t, path, pageSize, freelist, 10, le16(0xFFFF))
	writePage(t, path, pageSize, freelist, 16, le64(1<<32))
	rep, err := Salvage(path, Options{})
	if err != nil {
		t.Fatalf("salvage: %v", err)
	}
	if rep.Messages != 200 {
		t.Fatalf("salvaged %d messages, want the 200 queued", rep.Messages)
	}
}
