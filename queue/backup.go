package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
)

// BackupReport says what a backup holds.
type BackupReport struct {
	Messages int // in the snapshot
	Spooled  int // of them with a spool file, copied
	// Gone counts messages in the snapshot whose spool file was removed
	// before it could be copied: they finished just after the snapshot, and
	// are left out of the backup.
	Gone int
}

// Backup writes a consistent copy of the queue to dir, which must be empty
// or absent: queue.db and spool/, restorable by opening dir as a queue. It
// runs beside submissions and deliveries, taking one read transaction.
func (q *Queue) Backup(dir string) (BackupReport, error) {
	var rep BackupReport
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return rep, fmt.Errorf("backup: %s is not empty", dir)
	}
	spoolDir := filepath.Join(dir, "spool")
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return rep, fmt.Errorf("backup: %w", err)
	}
	dbPath := filepath.Join(dir, "queue.db")
	var gone []string
	err := q.db.View(func(tx *bolt.Tx) error {
		// Spool files first, while the snapshot still names them: a message
		// deleted since has lost its file, and is dropped below.
		err := tx.Bucket(bucketMessages).ForEach(func(k, v []byte) error {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode message %s: %w", k, err)
			}
			rep.Messages++
			if !m.Spooled {
				return nil
			}
			switch err := copyFile(q.spoolPath(m.ID), filepath.Join(spoolDir, m.ID)); {
			case errors.Is(err, os.ErrNotExist):
				gone = append(gone, m.ID)
			case err != nil:
				return err
			default:
				rep.Spooled++
			}
			return nil
		})
		if err != nil {
			return err
		}
		return writeFileSync(dbPath, func(w io.Writer) error { _, err := tx.WriteTo(w); return err })
	})
	if err != nil {
		return rep, fmt.Errorf("backup: %w", err)
	}
	if len(gone) > 0 {
		b, err := Open(dbPath, Options{SpoolDir: spoolDir})
		if err != nil {
			return rep, fmt.Errorf("backup: %w", err)
		}
		for _, id := range gone {
			if err := b.Delete(id); err != nil && !errors.Is(err, ErrNotFound) {
				b.Close()
				return rep, fmt.Errorf("backup: drop finished %s: %w", id, err)
			}
		}
		if err := b.Close(); err != nil {
			return rep, fmt.Errorf("backup: %w", err)
		}
		rep.Gone, rep.Messages = len(gone), rep.Messages-len(gone)
	}
	return rep, syncDir(dir)
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	return writeFileSync(to, func(w io.Writer) error { _, err := io.Copy(w, src); return err })
}

// writeFileSync creates path with what write writes, and fsyncs it.
func writeFileSync(path string, write func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
