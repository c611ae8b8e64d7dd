package queue

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupNeverWritesThroughALink: a name planted in the backup
// directory, even a link to a live file, makes the backup fail, and the
// file it points to is untouched.
func TestBackupNeverWritesThroughALink(t *testing.T) {
	live := filepath.Join(t.TempDir(), "queue.db")
	os.WriteFile(live, []byte("live"), 0o600)
	for _, plant := range []func(dir string) error{
		func(dir string) error { return os.Symlink(live, filepath.Join(dir, "state.db")) },
		func(dir string) error { return os.Symlink("../elsewhere", filepath.Join(dir, "state.db")) }, // dangling
		func(dir string) error { return os.WriteFile(filepath.Join(dir, "state.db"), nil, 0o666) },
	} {
		dir := t.TempDir()
		if err := plant(dir); err != nil {
			t.Fatal(err)
		}
		root, err := os.OpenRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		err = CreateSynced(root, "state.db", func(w io.Writer) error { _, err := io.WriteString(w, "secret"); return err })
		root.Close()
		if !errors.Is(err, fs.ErrExist) {
			t.Errorf("planted state.db: %v, want it to exist already", err)
		}
	}
	if b, _ := os.ReadFile(live); string(b) != "live" {
		t.Fatalf("the live file was written through a link: %q", b)
	}
}

// TestBackupReportsAFailedCopy: a spool file that cannot be copied fails
// the backup (the caller then removes what was written).
func TestBackupReportsAFailedCopy(t *testing.T) {
	clock := newClock()
	dir := t.TempDir()
	q := openTest(t, clock, dir, 16)
	defer q.Close()
	id, err := q.Enqueue("", envelope("b@x.test"), strings.NewReader(strings.Repeat("spooled body ", 10)))
	if err != nil {
		t.Fatal(err)
	}
	// A spool file that cannot be read as one.
	os.Remove(filepath.Join(dir, "spool", id))
	os.Mkdir(filepath.Join(dir, "spool", id), 0o700)
	root, err := os.OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if _, err := q.Backup(root); err == nil {
		t.Fatal("backup with an unreadable spool file succeeded")
	}
}
