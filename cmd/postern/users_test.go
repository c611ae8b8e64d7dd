package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TestUsersFile: users from a file written by configuration management
// log in; "user list" says where each user comes from; a reload with a bad
// line names it and keeps the users in force; SIGHUP puts a good file in
// force.
func TestUsersFile(t *testing.T) {
	d := newDaemon(t, nil)
	hash := func(pw string) string {
		out, err := d.run(pw+"\n", "user", "hash", "--password-stdin")
		if err != nil || !strings.HasPrefix(out, "$argon2id$v=19$") {
			t.Fatalf("user hash: %v %q", err, out)
		}
		return strings.TrimSpace(out)
	}
	appHash, opsHash := hash("app-pw"), hash("ops-pw")
	usersFile := filepath.Join(t.TempDir(), "users")
	write := func(text string) {
		if err := os.WriteFile(usersFile, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# managed by Ansible\napp " + appHash + " allow_from=*@example.org messages_per_hour=100\n")
	d.editConfig(`tls_listen: ["127.0.0.1:0"]`, `tls_listen: ["127.0.0.1:0"]`+"\n  auth: {users_file: "+usersFile+"}")
	if out, err := d.run("store-pw\n", "user", "add", "stored", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	body := []byte("From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n")
	if _, err := submit(d.starttls, "app", "app-pw", "a@example.org", "x@dest.test", body); err != nil {
		t.Fatalf("file user: %v", err)
	}
	var se *smtp.SMTPError
	if _, err := submit(d.starttls, "app", "app-pw", "a@example.com", "x@dest.test", body); !errors.As(err, &se) || se.Code != 553 {
		t.Fatalf("file user's sender patterns: %v", err)
	}
	out, err := d.run("", "user", "list")
	if err != nil || !strings.Contains(out, "app     file    *@example.org") || !strings.Contains(out, "stored  store   (any)") {
		t.Fatalf("user list: %v\n%s", err, out)
	}
	t.Logf("user list:\n%s", out)

	// A bad line: the reload is refused, naming the line; app still logs in.
	write("app " + appHash + "\nops " + opsHash + " require_tls=yes\n")
	out, err = d.run("", "reload")
	if err == nil || !strings.Contains(out, "submission.auth.users_file: users file "+usersFile+": line 2: user ops: unknown option \"require_tls=yes\"") {
		t.Fatalf("reload with a bad line: %v\n%s", err, out)
	}
	t.Logf("reload with a bad line: %s", out)
	if _, err := submit(d.starttls, "app", "app-pw", "a@example.org", "x@dest.test", body); err != nil {
		t.Fatalf("after a refused reload, the file user in force: %v", err)
	}
	if _, err := submit(d.starttls, "ops", "ops-pw", "a@example.org", "x@dest.test", body); !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("a user of the refused file: %v", err)
	}

	// SIGHUP with a good file: ops arrives, app leaves.
	write("ops " + opsHash + " require_tls\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for _, err = submit(d.starttls, "ops", "ops-pw", "a@example.org", "x@dest.test", body); err != nil && time.Now().Before(deadline); _, err = submit(d.starttls, "ops", "ops-pw", "a@example.org", "x@dest.test", body) {
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("user of the file after SIGHUP: %v", err)
	}
	if _, err := submit(d.starttls, "app", "app-pw", "a@example.org", "x@dest.test", body); !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("a user removed from the file: %v", err)
	}
	out, err = d.run("", "reload")
	if err != nil || !strings.Contains(out, "users file: 1 users from "+usersFile) {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	d.signal(syscall.SIGTERM)
}
