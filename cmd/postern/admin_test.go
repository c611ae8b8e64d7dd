package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/admin"
	"github.com/postern/postern/queue"
)

// localOps opens a data_dir as the CLI does without a daemon; bodies over
// 16 bytes are spooled.
func localOps(t *testing.T, dataDir string) *local {
	t.Helper()
	cfg := &Config{DataDir: dataDir}
	q, err := queue.Open(cfg.queuePath(), queue.Options{InlineLimit: 16})
	if err != nil {
		t.Fatal(err)
	}
	db, users, err := openState(cfg)
	if err != nil {
		q.Close()
		t.Fatal(err)
	}
	l := &local{q: q, users: users, state: db, cfg: cfg, close: func() error { db.Close(); return q.Close() }}
	t.Cleanup(func() { l.Close() })
	return l
}

// throwawayUser adds a system user for the test and removes it after. It
// needs root, and skips the test without it.
func throwawayUser(t *testing.T) (name string, uid, gid uint32) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to add a user")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name = "pt" + hex.EncodeToString(b)
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Skipf("cannot add a user: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	out, err := exec.Command("id", "-u", name).Output()
	u, err2 := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 32)
	out, err3 := exec.Command("id", "-g", name).Output()
	g, err4 := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 32)
	if err := errors.Join(err, err2, err3, err4); err != nil {
		t.Fatal(err)
	}
	return name, uint32(u), uint32(g)
}

// binaryForAll is the postern binary where any user may run it, and the
// directory it is in.
func binaryForAll(t *testing.T) string {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	openToAll(t, dir)
	out := filepath.Join(dir, "postern")
	if err := os.WriteFile(out, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return out
}

// openToAll lets every user through dir and the test's temporary
// directories above it.
func openToAll(t *testing.T, dir string) {
	t.Helper()
	for p := dir; p != os.TempDir() && p != filepath.Dir(p); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// runAs runs bin as another user.
func runAs(uid, gid uint32, stdin, bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/"
	cmd.Stdin = strings.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// TestBackupRefusesUnsafeDirectory: a backup goes only into a directory
// the service user creates (0700) or owns empty, below directories nobody
// else can change; anything else is refused with nothing written into it
// (issue 21, item 1).
func TestBackupRefusesUnsafeDirectory(t *testing.T) {
	ops := localOps(t, filepath.Join(t.TempDir(), "data"))
	if err := ops.UserAdd("app", "pw", nil); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	mkdir := func(name string, mode fs.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // past the umask
		return p
	}
	cases := []struct {
		name  string
		dir   func() (dir, watch string) // watch: what must stay as it was
		inErr string
	}{
		{"a link to an empty directory", func() (string, string) {
			target := mkdir("target", 0o700)
			link := filepath.Join(base, "link")
			os.Symlink(target, link)
			return link, target
		}, "symbolic link"},
		{"an empty directory others can write in", func() (string, string) {
			d := mkdir("shared", 0o777)
			return d, d
		}, "writable by others"},
		{"a directory in a parent others can write in", func() (string, string) {
			p := mkdir("open-parent", 0o777)
			return filepath.Join(p, "backup"), p
		}, "writable by others"},
		{"a directory with something in it", func() (string, string) {
			d := mkdir("planted", 0o700)
			os.WriteFile(filepath.Join(d, "state.db"), nil, 0o666)
			return d, d
		}, "not empty"},
		{"a relative name", func() (string, string) { return "backup", "" }, "absolute"},
		{"a file", func() (string, string) {
			f := filepath.Join(base, "file")
			os.WriteFile(f, nil, 0o600)
			return f, ""
		}, "not a directory"},
	}
	for _, c := range cases {
		dir, watch := c.dir()
		var before []string
		if watch != "" {
			before = entries(t, watch)
		}
		_, err := ops.Backup(admin.BackupTarget{Dir: dir})
		if err == nil || !strings.Contains(err.Error(), c.inErr) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.inErr)
		}
		if watch != "" && strings.Join(entries(t, watch), " ") != strings.Join(before, " ") {
			t.Errorf("%s: %s now holds %v", c.name, watch, entries(t, watch))
		}
	}

	// A directory owned by someone else (root only: it takes a second user).
	t.Run("owned by another user", func(t *testing.T) {
		_, uid, gid := throwawayUser(t)
		d := filepath.Join(base, "theirs")
		os.Mkdir(d, 0o700)
		os.Chown(d, int(uid), int(gid))
		if _, err := ops.Backup(admin.BackupTarget{Dir: d}); err == nil || !strings.Contains(err.Error(), "belongs to") {
			t.Errorf("another user's directory: %v", err)
		}
		if e := entries(t, d); len(e) > 0 {
			t.Errorf("another user's directory now holds %v", e)
		}
	})

	// And the good case: a new directory, 0700, with the three parts.
	dir := filepath.Join(base, "good")
	if _, err := ops.Backup(admin.BackupTarget{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("backup directory: %v %v", fi.Mode(), err)
	}
	if got := strings.Join(entries(t, dir), " "); got != "queue.db spool state.db" {
		t.Fatalf("backup holds %s", got)
	}
}

// TestFailedBackupRemovesWhatItWrote: a backup that fails part way leaves
// no half backup behind: a directory it made is gone, one it was given is
// empty again (issue 21, item 1).
func TestFailedBackupRemovesWhatItWrote(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	ops := localOps(t, data)
	for _, body := range []string{"Subject: a\r\n\r\n" + strings.Repeat("a", 100), "Subject: b\r\n\r\n" + strings.Repeat("b", 100)} {
		if _, err := ops.q.Enqueue("", queue.Envelope{From: "app@example.org", Recipients: []queue.Recipient{{Addr: "r@x.test"}}},
			strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
	// The second spool file cannot be read as one: the copy fails after
	// the first was written.
	spool := entries(t, filepath.Join(data, "spool"))
	if len(spool) != 2 {
		t.Fatalf("spool: %v", spool)
	}
	last := filepath.Join(data, "spool", spool[1])
	os.Remove(last)
	os.Mkdir(last, 0o700)

	fresh := filepath.Join(t.TempDir(), "backup")
	if _, err := ops.Backup(admin.BackupTarget{Dir: fresh}); err == nil {
		t.Fatal("backup with an unreadable spool file succeeded")
	}
	if _, err := os.Lstat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed backup left %s (%v) holding %v", fresh, err, entries(t, fresh))
	}
	if e := entries(t, filepath.Dir(fresh)); len(e) > 0 {
		t.Errorf("failed backup left %v beside %s", e, fresh)
	}
	given := t.TempDir()
	if _, err := ops.Backup(admin.BackupTarget{Dir: given}); err == nil {
		t.Fatal("backup with an unreadable spool file succeeded")
	}
	if e := entries(t, given); len(e) > 0 {
		t.Errorf("failed backup left %v in %s", e, given)
	}
}

// TestBackupRefusesPathTheServiceCannotKeep: a daemon with a file system
// view of its own (as PrivateTmp gives it a /tmp of its own) refuses a
// backup where the operator would not find it, instead of reporting one
// that vanishes when the service stops (issue 21, item 5). It needs root
// (a mount namespace) and is skipped without it.
func TestBackupRefusesPathTheServiceCannotKeep(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	if out, err := exec.Command(unshare, "-m", "true").CombinedOutput(); err != nil {
		t.Skipf("cannot make a mount namespace: %v %s", err, out)
	}
	d := newDaemon(t, nil)
	private := t.TempDir() // the daemon's private "/tmp": a tmpfs only it sees
	d.wrap = []string{unshare, "-m", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"`, private}
	d.start()
	defer d.signal(syscall.SIGTERM)
	dir := filepath.Join(private, "backup")
	out, err := d.run("", "backup", dir)
	if err == nil || !strings.Contains(out, "not the same directory") || !strings.Contains(out, "/var/backups/postern") {
		t.Errorf("backup into the daemon's private directory: %v\n%s", err, out)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s exists here", dir)
	}
	// Where both see the same directory, it works.
	shared := filepath.Join(t.TempDir(), "backup")
	if out, err := d.run("", "backup", shared); err != nil {
		t.Fatalf("backup: %v %s", err, out)
	}
	if got := strings.Join(entries(t, shared), " "); got != "queue.db spool state.db" {
		t.Fatalf("backup holds %s", got)
	}
}

// TestBackupHelpSaysWhereBackupsGo (issue 21, item 5).
func TestBackupHelpSaysWhereBackupsGo(t *testing.T) {
	root := rootCommand()
	var out strings.Builder
	root.SetOut(&out)
	root.SetArgs([]string{"backup", "--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"/var/backups/postern", "PrivateTmp=yes", "ProtectSystem=strict", "install -d -o postern"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("backup help lacks %q:\n%s", want, out.String())
		}
	}
}

// TestAdminSocketInPrivateDirectory: the admin socket is made in a
// directory of its own, 0700, even in a data_dir others can enter: no
// other user can connect, not even while the socket's own mode is
// permissive, as it is before a chmod (issue 21, item 2).
func TestAdminSocketInPrivateDirectory(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	os.Mkdir(data, 0o755)
	os.Chmod(data, 0o755)
	cfg := &Config{DataDir: data}
	ops := localOps(t, data)
	srv, err := serveAdmin(cfg.socketPath(), ops, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sockDir := filepath.Dir(cfg.socketPath())
	fi, err := os.Lstat(sockDir)
	if err != nil || sockDir == data || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("the socket is in %s (%v, %v): want a directory of its own, mode 0700", sockDir, fi.Mode(), err)
	}

	t.Run("another user", func(t *testing.T) {
		_, uid, gid := throwawayUser(t)
		bin := binaryForAll(t)
		openToAll(t, data)
		conf := filepath.Join(base, "postern.yaml")
		os.WriteFile(conf, []byte("hostname: test.example\ndata_dir: "+data+"\n"), 0o644)
		os.Chmod(conf, 0o644)
		// As in the moment between the socket's creation and its chmod.
		os.Chmod(cfg.socketPath(), 0o777)
		out, err := runAs(uid, gid, "", bin, "user", "list", "-c", conf)
		if err == nil || strings.Contains(out, "NAME") {
			t.Fatalf("another user reached the admin socket: %v\n%s", err, out)
		}
		t.Logf("another user: %s", out)
	})
}

// TestAdminSocketClosesConnections: a connection to the admin socket
// serves one request and is closed, and a request body is bounded
// (issue 21, items 2 and 3).
func TestAdminSocketClosesConnections(t *testing.T) {
	data := t.TempDir()
	cfg := &Config{DataDir: data}
	ops := localOps(t, data)
	if err := ops.UserAdd("app", "pw", nil); err != nil {
		t.Fatal(err)
	}
	srv, err := serveAdmin(cfg.socketPath(), ops, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	c, err := net.Dial("unix", cfg.socketPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /v1/users HTTP/1.1\r\nHost: postern\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v1/users: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	if err := closedWithin(c, br, 5*time.Second); err != nil {
		t.Errorf("after one request: %v", err)
	}

	// A body past the bound is refused, not read to its end.
	big := `{"on": true, "pad": "` + strings.Repeat("x", 1<<20) + `"}`
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.socketPath())
	}}}
	defer hc.CloseIdleConnections()
	resp, err = hc.Post("http://postern/v1/users/app/require-tls", "application/json", strings.NewReader(big))
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a 1 MiB body: %v %v, want 413", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
	if u, err := ops.users.Get("app"); err != nil || u.RequireTLS {
		t.Errorf("the oversized request was applied: %+v %v", u, err)
	}
}

// closedWithin waits until the server closes c.
func closedWithin(c net.Conn, br *bufio.Reader, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := br.ReadByte()
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errors.New("connection still open")
	case err == nil:
		return errors.New("unexpected data")
	}
	return err
}

// TestAdminHTTPLimits: the admin HTTP listener closes an idle kept-alive
// connection and one trickling its body, and holds at most MaxConns
// connections at once (issue 21, item 3).
func TestAdminHTTPLimits(t *testing.T) {
	serve := func(lim serverLimits) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := serveWebOn(l, &adminHTTP{limits: lim, metrics: http.NotFoundHandler()})
		t.Cleanup(func() { srv.Close() })
		return l.Addr().String()
	}
	dialFrom := func(from byte, addr string) (net.Conn, *bufio.Reader) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, from)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	dial := func(addr string) (net.Conn, *bufio.Reader) { return dialFrom(1, addr) }
	healthz := func(c net.Conn, br *bufio.Reader, wait time.Duration) error {
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(wait))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	short := serve(serverLimits{ReadHeader: 200 * time.Millisecond, Read: 300 * time.Millisecond, Write: time.Second,
		Idle: 200 * time.Millisecond, MaxConns: 8})

	c, br := dial(short)
	if err := healthz(c, br, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := closedWithin(c, br, 5*time.Second); err != nil {
		t.Errorf("kept-alive connection after /healthz: %v", err)
	}

	c, br = dial(short)
	io.WriteString(c, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(br, nil); err == nil {
		io.Copy(io.Discard, resp.Body)
	}
	if err := closedWithin(c, br, 5*time.Second); err != nil {
		t.Errorf("connection trickling a body: %v", err)
	}

	// Two connections at most (one per peer): a third waits until one
	// closes; a second one from the same peer is closed at once.
	capped := serve(serverLimits{ReadHeader: time.Minute, Read: time.Minute, Write: time.Minute, Idle: time.Minute, MaxConns: 2})
	first, firstBR := dialFrom(1, capped)
	if err := healthz(first, firstBR, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	again, againBR := dialFrom(1, capped)
	if err := healthz(again, againBR, 5*time.Second); err == nil {
		t.Errorf("a second connection from one peer over a cap of one per peer was answered")
	}
	second, secondBR := dialFrom(2, capped)
	if err := healthz(second, secondBR, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	third, thirdBR := dialFrom(3, capped)
	if err := healthz(third, thirdBR, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a third connection over a cap of two: %v, want no answer", err)
	}
	first.Close()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(thirdBR, nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("the third connection once the first closed: %v", err)
	}
}

// TestCLIRefusesDataDirOfAnotherUser: without a daemon, a command run as
// root on the service user's data_dir refuses, saying how to run it, and
// makes no file; as the owner it works (issue 21, item 4). It needs root
// and a throwaway user, and is skipped without them.
func TestCLIRefusesDataDirOfAnotherUser(t *testing.T) {
	name, uid, gid := throwawayUser(t)
	d := newDaemon(t, nil)
	bin := binaryForAll(t)
	os.Mkdir(d.dataDir, 0o700)
	os.Chown(d.dataDir, int(uid), int(gid))
	openToAll(t, filepath.Dir(d.dataDir))
	os.Chmod(d.cfg, 0o644)
	os.Chmod(filepath.Join(filepath.Dir(d.cfg), "root.anchor"), 0o644)

	out, err := d.run("pw\n", "user", "add", "app", "--password-stdin")
	if err == nil || !strings.Contains(out, "runuser -u "+name+" -- ") {
		t.Errorf("user add as root on %s's data_dir: %v\n%s", name, err, out)
	}
	t.Logf("as root: %s", out)
	if e := entries(t, d.dataDir); len(e) > 0 {
		t.Fatalf("root made %v in %s's data_dir", e, name)
	}
	if out, err := runAs(uid, gid, "pw\n", bin, "user", "add", "app", "--password-stdin", "-c", d.cfg); err != nil {
		t.Fatalf("user add as %s: %v\n%s", name, err, out)
	}
	for _, e := range entries(t, d.dataDir) {
		fi, _ := os.Lstat(filepath.Join(d.dataDir, e))
		if owner := fi.Sys().(*syscall.Stat_t).Uid; owner != uid {
			t.Errorf("%s belongs to uid %d", e, owner)
		}
	}
	// A file root made before (by an older postern) is named, with the fix.
	os.Remove(filepath.Join(d.dataDir, "state.db"))
	os.WriteFile(filepath.Join(d.dataDir, "state.db"), nil, 0o600)
	out, err = runAs(uid, gid, "", bin, "user", "list", "-c", d.cfg)
	if err == nil || !strings.Contains(out, "state.db belongs to root") || !strings.Contains(out, "chown -R "+name+": ") {
		t.Errorf("a root-owned file in data_dir: %v\n%s", err, out)
	}
}
