package queue

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Salvage must never leave the data directory without a queue.db: a daemon
// started then (after a crash of salvage between its two renames, or after
// the second rename failed) creates an empty database, and its Recover
// deletes every spool file as unreferenced, the bodies of acknowledged
// messages among them.
func TestSalvageNeverLeavesTheDataDirectoryWithoutAQueue(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "queue.db")
	q := openTest(t, newClock(), dir, 16) // bodies over 16 bytes are spooled
	id, err := q.Enqueue("", envelope("a@x.test"), strings.NewReader(strings.Repeat("large body ", 10)))
	if err != nil {
		t.Fatal(err)
	}
	q.Close()

	failed := errors.New("injected: the new database could not be put in place")
	rename = func(from, to string) error {
		if to == path {
			return failed // a crash here leaves the same state, without the error
		}
		return os.Rename(from, to)
	}
	defer func() { rename = os.Rename }()
	if _, err := Salvage(path, Options{}); !errors.Is(err, failed) {
		t.Fatalf("salvage: %v", err)
	}
	rename = os.Rename

	_, statErr := os.Stat(path)
	// What the next start does.
	q = openTest(t, newClock(), dir, 16)
	defer q.Close()
	if _, err := q.Recover(); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Get(id); statErr != nil || err != nil {
		t.Fatalf("after salvage failed to put the new database in place: queue.db %v; the next start has message %s: %v (spool file: %v)",
			statErr, id, err, func() error { _, err := os.Stat(filepath.Join(dir, "spool", id)); return err }())
	}
}
