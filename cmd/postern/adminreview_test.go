package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/internal/admin"
)

// TestBackupRefusesPathThroughLinkOthersControl: a DIR named through a
// symbolic link that another user can replace is refused, as a parent
// of theirs is. The link resolves to a safe directory while the backup is
// checked; whoever controls it can point it elsewhere afterwards (or
// between the check and the writes), and the operator then restores
// their queue and state from the name they typed.
func TestBackupRefusesPathThroughLinkOthersControl(t *testing.T) {
	ops := localOps(t, filepath.Join(t.TempDir(), "data"))
	base := t.TempDir()
	// linkIn makes dir (mode) holding a link to a safe directory of
	// root's, and returns DIR named through that link, and the target.
	linkIn := func(t *testing.T, dir string, mode os.FileMode) (string, string) {
		safe := dir + "-target"
		if err := os.Mkdir(safe, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(dir, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, mode) // past the umask
		if err := os.Symlink(safe, filepath.Join(dir, "link")); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, "link", "backup"), safe
	}
	check := func(t *testing.T, dir, safe, inErr string) {
		t.Helper()
		_, err := ops.Backup(admin.BackupTarget{Dir: dir})
		if err == nil || !strings.Contains(err.Error(), inErr) {
			t.Errorf("backup into %s: %v, want an error saying %q", dir, err, inErr)
		}
		if e := entries(t, safe); len(e) > 0 {
			t.Errorf("the link's target now holds %v", e)
		}
	}

	t.Run("link in a directory anyone can write in", func(t *testing.T) {
		dir, safe := linkIn(t, filepath.Join(base, "open"), 0o777)
		check(t, dir, safe, "writable by others")
	})
	t.Run("link in another user's directory", func(t *testing.T) {
		_, uid, gid := throwawayUser(t)
		dir, safe := linkIn(t, filepath.Join(base, "theirs"), 0o755)
		os.Lchown(filepath.Join(base, "theirs"), int(uid), int(gid))
		os.Lchown(filepath.Join(base, "theirs", "link"), int(uid), int(gid))
		check(t, dir, safe, "belongs to")
	})
	t.Run("root's link, relative, in root's directory", func(t *testing.T) {
		_, safe := linkIn(t, filepath.Join(base, "ours"), 0o755)
		rel := filepath.Join(base, "ours", "rel")
		if err := os.Symlink("../ours/./link", rel); err != nil {
			t.Fatal(err)
		}
		if _, err := ops.Backup(admin.BackupTarget{Dir: filepath.Join(rel, "backup")}); err != nil {
			t.Fatalf("backup through root's own links: %v", err)
		}
		if got := strings.Join(entries(t, filepath.Join(safe, "backup")), " "); got != "queue.db spool state.db" {
			t.Errorf("backup holds %q", got)
		}
	})
}

// TestAdminHTTPOneClientCannotTakeEverySlot: the admin listener's
// connection cap is not one that a single client can fill. The health
// checks stay open to load balancers (docs/operations.md), so anyone who
// can reach the port could otherwise hold every slot with connections that
// send nothing, reopening each as it times out, and /healthz and /readyz
// would go unanswered: the load balancer or orchestrator then takes the
// relay out or restarts it.
func TestAdminHTTPOneClientCannotTakeEverySlot(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim := serverLimits{ReadHeader: time.Minute, Read: time.Minute, Write: time.Minute, Idle: time.Minute, MaxConns: 8}
	srv := serveWebOn(l, &adminHTTP{limits: lim, metrics: http.NotFoundHandler()})
	defer srv.Close()

	// The attacker, from 127.0.0.2, opens twice the cap and sends nothing.
	attacker := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	for range 2 * lim.MaxConns {
		c, err := attacker.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Skipf("cannot dial from 127.0.0.2: %v", err)
		}
		defer c.Close()
	}
	// The monitor, from 127.0.0.1, asks for /healthz.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + l.Addr().String() + "/healthz")
	if err != nil {
		t.Fatalf("/healthz while one client holds %d connections: %v", 2*lim.MaxConns, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %s", resp.Status)
	}
}

// TestSalvageRefusesDataDirOfAnotherUser: "postern queue salvage" writes
// a new queue.db; run as root on the service user's data_dir (as one may
// in the middle of an incident) it must refuse, as every other command
// does, instead of leaving a queue.db of root's, mode 0600, that the
// service cannot open. Root and a throwaway user; skipped without them.
func TestSalvageRefusesDataDirOfAnotherUser(t *testing.T) {
	name, uid, gid := throwawayUser(t)
	d := newDaemon(t, nil)
	bin := binaryForAll(t)
	os.Mkdir(d.dataDir, 0o700)
	os.Chown(d.dataDir, int(uid), int(gid))
	openToAll(t, filepath.Dir(d.dataDir))
	os.Chmod(d.cfg, 0o644)
	os.Chmod(filepath.Join(filepath.Dir(d.cfg), "root.anchor"), 0o644)
	if out, err := runAs(uid, gid, "", bin, "user", "list", "-c", d.cfg); err != nil {
		t.Fatalf("user list as %s: %v\n%s", name, err, out)
	}

	out, err := d.run("", "queue", "salvage")
	if err == nil || !strings.Contains(out, "runuser -u "+name+" -- ") {
		t.Errorf("queue salvage as root on %s's data_dir: %v\n%s", name, err, out)
	}
	for _, e := range entries(t, d.dataDir) {
		fi, _ := os.Lstat(filepath.Join(d.dataDir, e))
		if owner := fi.Sys().(*syscall.Stat_t).Uid; owner != uid {
			t.Errorf("after salvage as root, %s belongs to uid %d", e, owner)
		}
	}
}

// TestCLIRefusesSocketOthersCouldHaveReplaced: in a data_dir that others
// can write in (made by hand under a permissive umask, the case of issue
// 21 item 2), anyone can rename the socket's private directory away and
// put one of theirs, holding a socket of theirs, in its place. The CLI
// must not send its requests (passwords among them) to that socket; and
// the daemon must not run on such a data_dir. Root and a throwaway user;
// skipped without them.
func TestCLIRefusesSocketOthersCouldHaveReplaced(t *testing.T) {
	_, uid, gid := throwawayUser(t)
	data := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(data, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(data, 0o777)
	cfg := &Config{DataDir: data}

	// The other user's directory and socket, where the daemon's were.
	admin := filepath.Dir(cfg.socketPath())
	if err := os.Mkdir(admin, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", cfg.socketPath())
	if err != nil {
		t.Fatal(err)
	}
	os.Lchown(admin, int(uid), int(gid))
	os.Lchown(cfg.socketPath(), int(uid), int(gid))
	got := make(chan string, 10)
	fake := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- string(b)
		io.WriteString(w, "{}")
	})}
	fake.SetKeepAlivesEnabled(false)
	go fake.Serve(l)
	defer fake.Close()

	ops, err := openOperations(cfg)
	if err == nil {
		err = ops.UserAdd("app", "s3cret-pw", nil)
		ops.Close()
	}
	select {
	case body := <-got:
		t.Errorf("the CLI sent %s to a socket in another user's directory", body)
	default:
	}
	if err == nil {
		t.Errorf("the CLI worked through a socket another user could have put in place")
	}
	t.Logf("CLI: %v", err)

	// Nor to one in another user's directory, however it came there.
	os.Chmod(data, 0o700)
	ops, err = openOperations(cfg)
	if err == nil {
		err = ops.UserAdd("app", "s3cret-pw", nil)
		ops.Close()
	}
	select {
	case body := <-got:
		t.Errorf("the CLI sent %s to a socket in another user's directory (data_dir 0700)", body)
	default:
	}
	if err == nil || !strings.Contains(err.Error(), "not talking to it") {
		t.Errorf("a socket in another user's directory, data_dir 0700: %v", err)
	}

	// And the daemon does not start on such a data_dir.
	openDir := t.TempDir()
	os.Chmod(openDir, 0o777)
	if err := checkDataDirOwner(openDir); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Errorf("data_dir mode 0777: %v, want a refusal saying it is writable by others", err)
	}
}

// TestServiceUnitInstallLetsTheServiceReadItsConfig: the install commands
// in the unit's header, run as written (the user's name and /etc/postern
// moved into the test's own), leave a configuration the service user can
// read: the daemon runs as that user, and docs/operations.md has every
// command run as it ("runuser -u postern -- postern backup … -c
// /etc/postern/postern.yaml"). Root and a throwaway user; skipped without
// them.
func TestServiceUnitInstallLetsTheServiceReadItsConfig(t *testing.T) {
	name, uid, gid := throwawayUser(t)
	b, err := os.ReadFile("../../configs/postern.service")
	if err != nil {
		t.Fatal(err)
	}
	etc := filepath.Join(t.TempDir(), "etc")
	openToAll(t, filepath.Dir(etc))
	ranConfig, sawUser := false, false
	for _, line := range strings.Split(string(b), "\n") {
		cmd, ok := strings.CutPrefix(line, "#   ")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(cmd, "useradd "):
			sawUser = true
		case strings.HasPrefix(cmd, "install ") && strings.Contains(cmd, "/etc/postern/postern.yaml"):
			if !sawUser && strings.Contains(cmd, "postern ") {
				t.Errorf("%q names the postern user or group before the useradd line makes it", cmd)
			}
			args := strings.Fields(strings.NewReplacer("/etc/postern/", etc+"/", "configs/", "../../configs/",
				" postern ", " "+name+" ").Replace(cmd + " "))
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v %s", strings.Join(args, " "), err, out)
			}
			ranConfig = true
		}
	}
	if !ranConfig {
		t.Fatal("the unit's header does not install /etc/postern/postern.yaml")
	}
	os.Chmod(etc, 0o755) // install -D made it with root's umask
	conf := filepath.Join(etc, "postern.yaml")
	bin := binaryForAll(t)
	if out, err := runAs(uid, gid, "", bin, "config", "check", "-c", conf); err != nil && strings.Contains(out, "permission denied") {
		fi, _ := os.Stat(conf)
		st := fi.Sys().(*syscall.Stat_t)
		t.Errorf("the service user cannot read the configuration the unit's header installs (mode %s, uid %d gid %d): %v\n%s",
			fi.Mode(), st.Uid, st.Gid, err, out)
	}
}

// TestStoppedBackupLeavesNothingLikeABackup: a backup the daemon does not
// finish (it is killed, by a crash, a power loss, or systemd when a stop
// takes longer than TimeoutStopSec, as one does while a backup holds its
// read transaction) must not leave, under the name the operator gave, a directory
// that looks like one. What it left (spool/ without queue.db and
// state.db) restores as an empty queue with no users, and with DIR named
// by the date, as docs/operations.md has it, it is "the last backup". A
// spool file that is a FIFO holds the copy in place, so the stop comes
// while the backup is part way.
func TestStoppedBackupLeavesNothingLikeABackup(t *testing.T) {
	d := newDaemon(t, nil)
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("b", 98)+"\r\n", 2000) // spooled
	reply, err := submit(d.starttls, "app", "pw", "app@example.org", "rcpt@stuck.test", []byte(big))
	if err != nil {
		t.Fatal(err)
	}
	id := queueID(reply)
	if out, err := d.run("", "queue", "hold", id); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	spool := filepath.Join(d.dataDir, "spool", id)
	if err := os.Remove(spool); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(spool, 0o600); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "backup")
	backup := exec.Command(d.bin, "backup", dir, "-c", d.cfg)
	if err := backup.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the copy is under way: it made spool/ and waits on the FIFO.
	if !eventually(t, 10*time.Second, func() bool {
		found, _ := filepath.Glob(filepath.Join(filepath.Dir(dir), "*", "spool"))
		return len(found) > 0
	}) {
		t.Fatal("the backup did not start copying")
	}
	// Killed, as systemd does once TimeoutStopSec has passed (a stop waits
	// for the backup's read transaction), or as a crash or power loss is.
	d.signal(syscall.SIGKILL)
	if err := backup.Wait(); err == nil {
		t.Fatal("the backup succeeded without its spool file")
	}
	if fi, err := os.Lstat(dir); err == nil {
		t.Errorf("the stopped backup left %s (%s) holding %v: named like a backup, it restores as an empty queue with no users",
			dir, fi.Mode(), entries(t, dir))
	}
}
