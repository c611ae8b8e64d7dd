package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"syscall"

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

// Backup writes a consistent copy of the queue into dir: queue.db and
// spool/, restorable by opening the directory as a queue. It runs beside
// submissions and deliveries, taking one read transaction.
//
// dir is held open by the caller, who has made sure that nobody else can
// write in it (it decides who may own it); Backup creates every file with
// O_EXCL and never through a symbolic link, so it fails rather than write
// into something it did not create. On error, what it wrote is left for
// the caller to remove.
func (q *Queue) Backup(dir *os.Root) (BackupReport, error) {
	var rep BackupReport
	if err := dir.Mkdir("spool", 0o700); err != nil {
		return rep, fmt.Errorf("backup: %w", err)
	}
	var gone []string
	err := q.view(func(tx *bolt.Tx) error {
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
			switch err := copyInto(dir, path.Join("spool", m.ID), q.spoolPath(m.ID)); {
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
		return CreateSynced(dir, "queue.db", func(w io.Writer) error { _, err := tx.WriteTo(w); return err })
	})
	if err != nil {
		return rep, fmt.Errorf("backup: %w", err)
	}
	// The spool files' entries must be durable with the database that
	// names them.
	if err := SyncIn(dir, "spool"); err != nil {
		return rep, fmt.Errorf("backup: %w", err)
	}
	if len(gone) > 0 {
		if err := dropFinished(dir, gone); err != nil {
			return rep, fmt.Errorf("backup: %w", err)
		}
		rep.Gone, rep.Messages = len(gone), rep.Messages-len(gone)
	}
	return rep, nil
}

// dropFinished deletes from the copy the messages whose spool files went
// before they could be copied. The copy is opened through dir, so that it
// is the file Backup wrote, wherever dir's name now points.
func dropFinished(dir *os.Root, ids []string) error {
	db, err := bolt.Open(path.Join(dir.Name(), "queue.db"), 0o600, &bolt.Options{
		OpenFile: func(_ string, flag int, perm os.FileMode) (*os.File, error) {
			return dir.OpenFile("queue.db", flag&^os.O_CREATE|syscall.O_NOFOLLOW, perm)
		},
	})
	if err != nil {
		return fmt.Errorf("open the copy: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, id := range ids {
			m, err := getMessage(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if err := deleteMessage(tx, m); err != nil {
				return fmt.Errorf("drop finished %s: %w", id, err)
			}
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}

func copyInto(dir *os.Root, name, from string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	return CreateSynced(dir, name, func(w io.Writer) error { _, err := io.Copy(w, src); return err })
}

// CreateSynced creates name in dir, mode 0600, with what write writes, and
// fsyncs it. It refuses a name that exists, even as a dangling symbolic
// link (O_EXCL), and never follows one (O_NOFOLLOW).
func CreateSynced(dir *os.Root, name string, write func(io.Writer) error) error {
	f, err := dir.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return f.Close()
}

// SyncIn fsyncs the directory name in dir ("." for dir itself), making the
// entries created in it durable.
func SyncIn(dir *os.Root, name string) error {
	d, err := dir.OpenFile(name, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return nil
}
