package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// wrongUserError: a command would create or open data_dir's files as a
// user other than the one who owns data_dir. Files it made would be that
// user's, mode 0600, and the service could no longer open them.
type wrongUserError struct {
	dataDir string
	path    string // the entry with the other owner (dataDir itself, or a file in it)
	owner   uint32 // who owns dataDir
	found   uint32 // who owns path, or who runs the command
	asUs    bool   // found is this process's user
}

func (e *wrongUserError) Error() string {
	if e.asUs {
		name := lookupName(e.owner)
		return fmt.Sprintf("data_dir %s belongs to %s, but this command runs as %s: it must run as data_dir's owner, "+
			"or the files it makes are ones the service cannot open; run it as that user: runuser -u %s -- %s",
			e.dataDir, userName(e.owner), userName(e.found), name, commandLine())
	}
	return fmt.Sprintf("%s belongs to %s, not to data_dir's owner %s (made by a command run as another user?): "+
		"give it back with: chown -R %s: %s", e.path, userName(e.found), userName(e.owner), lookupName(e.owner), e.dataDir)
}

// checkDataDirOwner refuses to work on data_dir as anyone but its owner,
// and refuses a data_dir whose files another user owns. A data_dir that
// does not exist yet is created by, and so belongs to, whoever runs first.
func checkDataDirOwner(dataDir string) error {
	fi, err := os.Stat(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data_dir %s: %w", dataDir, err)
	}
	owner := fi.Sys().(*syscall.Stat_t).Uid
	if me := uint32(os.Geteuid()); owner != me {
		return &wrongUserError{dataDir: dataDir, path: dataDir, owner: owner, found: me, asUs: true}
	}
	if err := checkDataDirMode(dataDir, fi); err != nil {
		return err
	}
	for _, name := range dataDirFiles {
		path := filepath.Join(dataDir, name)
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("data_dir %s: %w", dataDir, err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != owner {
			return &wrongUserError{dataDir: dataDir, path: path, owner: owner, found: uid}
		}
	}
	return nil
}

// checkDataDirMode: nobody but data_dir's owner may write in it, unless
// it is sticky (a tmpfs mounted there is 1777), where nobody can rename or
// remove another's entry. Whoever can could replace its files, and rename
// the admin socket's private directory away and put one of theirs, with a
// socket of theirs, in its place.
func checkDataDirMode(dataDir string, fi fs.FileInfo) error {
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("data_dir %s is writable by others (mode %04o): they could replace its files and the admin socket; "+
			"make it the service user's alone: chmod 0700 %s", dataDir, fi.Mode().Perm(), dataDir)
	}
	return nil
}

// checkSocketDir: before the CLI sends a request (a password, say) to the
// admin socket, the socket's directory is data_dir's owner's, mode 0700,
// in a data_dir nobody else can write in, so that no one else can have
// put a socket of theirs there. What this process cannot see is left to
// the connection, which then fails as well.
func checkSocketDir(dataDir, sockDir string) error {
	fi, err := os.Stat(dataDir)
	if err != nil {
		return nil
	}
	if err := checkDataDirMode(dataDir, fi); err != nil {
		return err
	}
	sfi, err := os.Lstat(sockDir)
	if err != nil {
		return nil
	}
	owner := fi.Sys().(*syscall.Stat_t).Uid
	if uid := sfi.Sys().(*syscall.Stat_t).Uid; !sfi.IsDir() || uid != owner || sfi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("the admin socket's directory %s is not a directory of data_dir's owner %s with mode 0700 "+
			"(it belongs to %s, mode %s): someone else may have put it there; not talking to it", sockDir, userName(owner), userName(uid), sfi.Mode())
	}
	return nil
}

// dataDirFiles are the entries Postern makes in data_dir ("admin.sock" is
// where the socket was before it had a directory of its own).
var dataDirFiles = []string{"queue.db", "spool", "state.db", "admin", "admin.sock"}

// userName says who uid is: "postern (uid 998)".
func userName(uid uint32) string {
	if name := lookupName(uid); name != strconv.FormatUint(uint64(uid), 10) {
		return fmt.Sprintf("%s (uid %d)", name, uid)
	}
	return fmt.Sprintf("uid %d", uid)
}

// lookupName is uid's user name, or the number when it has none.
func lookupName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}

// commandLine is this command as typed, quoted for a shell where needed.
func commandLine() string {
	args := make([]string, len(os.Args))
	for i, a := range os.Args {
		if a == "" || strings.ContainsFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r))
		}) {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		args[i] = a
	}
	return strings.Join(args, " ")
}
