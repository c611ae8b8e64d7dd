package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/queue"
)

// backupHelp is the long help of "postern backup": where a backup can go.
const backupHelp = `Copy a consistent snapshot of data_dir (queue.db, spool/, state.db) into DIR
while Postern runs; DIR then serves as a data_dir (restore: stop Postern,
replace data_dir with DIR, start it).

When Postern runs, the daemon writes the backup, as its own user and with its
own view of the file system. DIR must not exist (it is created, mode 0700) or
be an empty directory owned by the service user and writable by nobody else;
its parent and every directory above must belong to root or the service user
and be writable by nobody else (unless sticky, as /tmp is), and so must every
directory and symbolic link the name passes through. Under the systemd
unit (configs/postern.service) the service sees only data_dir and
/var/backups/postern as writable (ProtectSystem=strict), and has a /tmp and
/var/tmp of its own that are deleted when it stops (PrivateTmp=yes). So write
backups below /var/backups/postern, created once with
  install -d -o postern -g postern -m 0700 /var/backups/postern
A DIR whose parent the daemon does not see as the same directory you do (a
private /tmp, another mount namespace) is refused: the backup would be lost.

A backup that fails removes what it wrote.`

// Backup snapshots the queue (with its spool) and the state database into
// a new or empty directory, which then serves as a data_dir. A failed
// backup removes what it wrote. A new DIR is written under a temporary
// name beside it and renamed to DIR once complete: a backup cut off by a
// crash, a power loss or a SIGKILL never leaves a DIR that looks like a
// backup (spool/ without queue.db and state.db restores as an empty
// queue with no users).
func (l *local) Backup(t admin.BackupTarget) (rep admin.BackupReport, err error) {
	rep.Dir = t.Dir
	bd, err := openBackupDir(t, "backup")
	if err != nil {
		return rep, err
	}
	dir := bd.root
	defer func() {
		if err != nil {
			if cerr := bd.cleanup(); cerr != nil {
				err = fmt.Errorf("%w (and removing what it wrote: %v)", err, cerr)
			}
		}
		dir.Close()
	}()
	if rep.BackupReport, err = l.q.Backup(dir); err != nil {
		return rep, err
	}
	err = l.state.View(func(tx *bolt.Tx) error {
		return queue.CreateSynced(dir, "state.db", func(w io.Writer) error { _, err := tx.WriteTo(w); return err })
	})
	if err != nil {
		return rep, fmt.Errorf("backup state.db: %w", err)
	}
	if err := queue.SyncIn(dir, "."); err != nil {
		return rep, fmt.Errorf("backup: %w", err)
	}
	return rep, bd.publish()
}

// backupDir is the directory a backup is written into, held open.
type backupDir struct {
	root    *os.Root
	at      string // its name while the backup is written
	final   string // DIR
	created bool   // made here (at is then a temporary name beside DIR)
	what    string // "backup" or "export", for messages
}

// publish gives a complete backup its name, DIR, and makes sure the name
// leads to the directory written through root.
func (b *backupDir) publish() error {
	if b.created {
		// The parent is safe (checkSafePath): only root and the service
		// user can have made DIR since; in a sticky directory another
		// user's DIR cannot be renamed over, and a non-empty one never is.
		if _, err := os.Lstat(b.final); err == nil {
			return fmt.Errorf("%s: %s appeared meanwhile", b.what, b.final)
		}
		if err := os.Rename(b.at, b.final); err != nil {
			return fmt.Errorf("%s: %w", b.what, err)
		}
		b.at = b.final
		if err := syncPath(filepath.Dir(b.final)); err != nil {
			return fmt.Errorf("%s: %w", b.what, err)
		}
	}
	// The files went into the directory held open; make sure the name
	// the operator gave leads to it.
	return sameDir(b.final, b.root)
}

// cleanup removes what was written, and the directory if it was made here.
func (b *backupDir) cleanup() error {
	// Nobody else can write in the directory, and it was empty: all that
	// is in it is this backup's.
	if err := emptyDir(b.root); err != nil {
		return err
	}
	if b.created {
		if err := sameDir(b.at, b.root); err != nil {
			return err
		}
		return os.Remove(b.at)
	}
	return nil
}

// openBackupDir checks where a backup may go, creates the directory (under
// a temporary name) when DIR does not exist, and opens it.
func openBackupDir(t admin.BackupTarget, what string) (*backupDir, error) {
	if !filepath.IsAbs(t.Dir) || filepath.Clean(t.Dir) != t.Dir || t.Dir == "/" {
		return nil, fmt.Errorf("%s: %q is not a clean absolute directory", what, t.Dir)
	}
	parent := filepath.Dir(t.Dir)
	if t.Parent != nil {
		fi, err := os.Stat(parent)
		if err != nil || admin.IDOf(fi) != *t.Parent {
			return nil, fmt.Errorf("%s: %s is not the same directory for postern as for you (postern has a file system "+
				"view of its own: under the systemd unit /tmp and /var/tmp are private to the service, PrivateTmp=yes, and "+
				"deleted when it stops, and /home and /root are hidden from it, ProtectHome=yes); what it wrote there would be "+
				"lost: use a directory below /var/backups/postern", what, parent)
		}
	}
	if err := checkSafePath(parent); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	b := &backupDir{at: t.Dir, final: t.Dir, what: what}
	if _, err := os.Lstat(t.Dir); errors.Is(err, fs.ErrNotExist) {
		var rnd [6]byte
		rand.Read(rnd[:])
		b.at = filepath.Join(parent, "."+filepath.Base(t.Dir)+".partial-"+hex.EncodeToString(rnd[:]))
		if err := os.Mkdir(b.at, 0o700); err != nil {
			return nil, fmt.Errorf("%s: %w%s", what, err, unwritableHint(err))
		}
		b.created = true
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	removeDir := func() {
		if b.created {
			os.Remove(b.at)
		}
	}
	fi, err := os.Lstat(b.at)
	if err == nil {
		err = checkBackupDir(t.Dir, fi, b.created)
	}
	if err != nil {
		removeDir()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	b.root, err = os.OpenRoot(b.at)
	if err == nil {
		err = sameDir(b.at, b.root)
	}
	if err == nil && !b.created {
		err = checkEmpty(b.root)
	}
	if err != nil {
		if b.root != nil {
			b.root.Close()
		}
		removeDir()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}

// checkBackupDir: a directory (not a link to one) of the user writing the
// backup, that nobody else can write in. One made here must be 0700.
func checkBackupDir(path string, fi fs.FileInfo, created bool) error {
	st := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symbolic link; name the directory itself", path)
	case !fi.IsDir():
		return fmt.Errorf("%s exists and is not a directory", path)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%s belongs to %s, not to %s, who writes the backup", path, userName(st.Uid), userName(uint32(os.Geteuid())))
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s is writable by others (mode %04o): they could plant files in the backup", path, fi.Mode().Perm())
	case created && fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s was created with mode %04o", path, fi.Mode().Perm())
	}
	return nil
}

// checkSafePath: dir and every directory above it belong to root or to
// this user, and only their owner can change them (or they are sticky, as
// /tmp is, where nobody can rename or remove another's entry). Otherwise
// someone else could swap the backup's directory for one of theirs.
//
// The path is resolved here one name at a time, as the kernel does, and
// the check covers every directory passed through and every symbolic link
// followed on the way, not only the directories of where it leads: a link
// in a directory someone else can write in (or a link of theirs in /tmp)
// could lead somewhere safe while this looks, and somewhere of theirs
// when the backup is written or restored from the name the operator gave.
func checkSafePath(dir string) error {
	if err := checkSafeDir("/"); err != nil {
		return err
	}
	at := "/" // where the names so far lead: a directory, reached without links
	rest := dir
	for links := 0; rest != ""; {
		var name string
		name, rest, _ = strings.Cut(strings.TrimLeft(rest, "/"), "/")
		switch name {
		case "", ".":
			continue
		case "..":
			at = filepath.Dir(at)
			continue
		}
		next := filepath.Join(at, name)
		fi, err := os.Lstat(next)
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if err := checkSafeDir(next); err != nil {
				return err
			}
			at = next
			continue
		}
		// Only the link's owner and its directory's owners (checked
		// already) can change where it leads.
		if links++; links > 40 {
			return fmt.Errorf("%s: too many levels of symbolic links", dir)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 0 && int(uid) != os.Geteuid() {
			return fmt.Errorf("%s is a symbolic link that belongs to %s: only root's or %s's may lead to a backup", next, userName(uid), userName(uint32(os.Geteuid())))
		}
		target, err := os.Readlink(next)
		if err != nil {
			return err
		}
		if filepath.IsAbs(target) {
			at = "/"
		}
		rest = target + "/" + rest
	}
	return nil
}

// checkSafeDir: p is a directory of root's or this user's, that nobody
// else can change (or sticky).
func checkSafeDir(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", p)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to %s: only root's or %s's directories may hold a backup", p, userName(st.Uid), userName(uint32(os.Geteuid())))
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%s is writable by others (mode %04o): they could replace the backup", p, fi.Mode().Perm())
	}
	return nil
}

// sameDir: the name path still leads to the directory dir holds open.
func sameDir(path string, dir *os.Root) error {
	named, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	held, err := dir.Stat(".")
	if err != nil {
		return err
	}
	if !os.SameFile(named, held) {
		return fmt.Errorf("%s was replaced by another directory during the backup", path)
	}
	return nil
}

func checkEmpty(dir *os.Root) error {
	d, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return fmt.Errorf("read %s: %w", dir.Name(), err)
	}
	return fmt.Errorf("%s is not empty (it holds %s)", dir.Name(), names[0])
}

func emptyDir(dir *os.Root) error {
	d, err := dir.Open(".")
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := dir.RemoveAll(n); err != nil {
			return err
		}
	}
	return nil
}

func syncPath(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// unwritableHint explains, under the systemd unit, why the daemon cannot
// create a directory the operator can.
func unwritableHint(err error) string {
	switch {
	case errors.Is(err, syscall.EROFS):
		return " (read-only for postern: under the systemd unit, ProtectSystem=strict leaves only data_dir and /var/backups/postern writable)"
	case errors.Is(err, fs.ErrPermission):
		return " (postern's user may not write there: use a directory it owns, such as /var/backups/postern)"
	}
	return ""
}
