package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/relay/auth/ldaptest"
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
	if err != nil || !regexp.MustCompile(`app\s+\*@example.org\s+checked\s+no\s+-\s+file\n`).MatchString(out) ||
		!regexp.MustCompile(`stored\s+\(any\)\s+checked\s+no\s+\S+ \S+\s+store\n`).MatchString(out) {
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
	eventually(t, 10*time.Second, func() bool {
		_, err = submit(d.starttls, "ops", "ops-pw", "a@example.org", "x@dest.test", body)
		return err == nil
	})
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

// TestSendingLimitsAndSuspension: a credential over submission.limits gets
// 450 4.7.1, counted in the metric; the window survives a restart; "user
// show" gives the volume; "user suspend" stops a session already logged
// in on the running daemon, and "user resume" lets it send again.
func TestSendingLimitsAndSuspension(t *testing.T) {
	d := newDaemon(t, nil)
	d.editConfig(`tls_listen: ["127.0.0.1:0"]`, `tls_listen: ["127.0.0.1:0"]`+"\n  limits: {messages_per_hour: 2, recipients_per_hour: 0}")
	for _, u := range []string{"app", "ops"} {
		if out, err := d.run("pw\n", "user", "add", u, "--password-stdin"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	if out, err := d.run("", "user", "limit", "ops", "messages_per_hour", "0"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	body := []byte("From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n")
	for i := 0; i < 2; i++ {
		if _, err := submit(d.starttls, "app", "pw", "a@example.org", "x@dest.test", body); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	var se *smtp.SMTPError
	_, err := submit(d.starttls, "app", "pw", "a@example.org", "x@dest.test", body)
	if !errors.As(err, &se) || se.Code != 450 || se.EnhancedCode != (smtp.EnhancedCode{4, 7, 1}) {
		t.Fatalf("third message in the hour: %v", err)
	}
	t.Logf("third message: %v", err)
	if _, metrics := httpGet(t, "http://"+d.web+"/metrics"); !strings.Contains(metrics, `postern_submission_limited_total{reason="messages"} 1`) {
		t.Errorf("metric missing:\n%s", grepLines(metrics, "postern_submission_limited"))
	}
	out, err := d.run("", "user", "show", "app")
	if err != nil || !strings.Contains(out, "last hour:   2 messages (limit 2 per hour), 2 recipients (limit unlimited)") {
		t.Fatalf("user show: %v\n%s", err, out)
	}
	t.Logf("user show app:\n%s", out)

	// A restart does not reset the window.
	d.signal(syscall.SIGTERM)
	d.start()
	if _, err := submit(d.starttls, "app", "pw", "a@example.org", "x@dest.test", body); !errors.As(err, &se) || se.Code != 450 {
		t.Fatalf("after a restart: %v", err)
	}

	// The default limit changes live on reload.
	b, _ := os.ReadFile(d.cfg)
	os.WriteFile(d.cfg, []byte(strings.Replace(string(b), "messages_per_hour: 2", "messages_per_hour: 3", 1)), 0o600)
	if out, err := d.run("", "reload"); err != nil || !strings.Contains(out, "applied: submission.limits.messages_per_hour") {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	if _, err := submit(d.starttls, "app", "pw", "a@example.org", "x@dest.test", body); err != nil {
		t.Fatalf("after the limit was raised: %v", err)
	}

	// ops has no message limit of its own; suspended, its open session stops.
	c, err := smtp.DialStartTLS(d.starttls, e2eTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := submitOn(c, "ops", "pw", "a@example.org", "x@dest.test", body); err != nil {
		t.Fatal(err)
	}
	out, err = d.run("", "user", "suspend", "ops")
	if err != nil || !strings.Contains(out, "user ops suspended") {
		t.Fatalf("suspend: %v\n%s", err, out)
	}
	t.Logf("user suspend ops: %s", out)
	err = c.Mail("a@example.org", nil)
	if !errors.As(err, &se) || se.Code != 450 || !strings.Contains(se.Message, "suspended") {
		t.Fatalf("MAIL of a suspended credential: %v", err)
	}
	t.Logf("MAIL after suspend: %v", err)
	if out, err := d.run("", "user", "show", "ops"); err != nil || !strings.Contains(out, "suspended:   yes, since") {
		t.Fatalf("user show: %v\n%s", err, out)
	}
	if out, err := d.run("", "user", "resume", "ops"); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatalf("MAIL after resume: %v", err)
	}
	d.signal(syscall.SIGTERM)
}

// TestLDAPUsers: the daemon checks directory users against a real
// OpenLDAP over LDAPS, with their senders from the mail attribute; with
// the directory down a new login gets 454 4.7.0 while a remembered one
// still sends; a bad directory setting is named by its key.
func TestLDAPUsers(t *testing.T) {
	srv := ldaptest.Start(t, `dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
mail: alice@example.org
userPassword: alice-pw

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
mail: bob@example.org
userPassword: bob-pw
`)
	d := newDaemon(t, nil)
	ldapConf := fmt.Sprintf(`
  auth:
    ldap:
      url: %s
      ca_file: %s
      base: ou=people,dc=example,dc=org
      filter: "(&(objectClass=inetOrgPerson)(uid={user}))"
      sender_attribute: mail`, srv.TLSURL, srv.CAFile)
	d.editConfig(`tls_listen: ["127.0.0.1:0"]`, `tls_listen: ["127.0.0.1:0"]`+ldapConf)

	b, _ := os.ReadFile(d.cfg)
	good := string(b)
	os.WriteFile(d.cfg, []byte(strings.Replace(good, "ldaps://", "ldap://", 1)), 0o600)
	out, err := d.run("", "config", "check")
	if processExit(err) != 2 || !strings.Contains(out, "submission.auth.ldap.url: ") || !strings.Contains(out, "cleartext") {
		t.Fatalf("ldap:// without starttls: %v\n%s", err, out)
	}
	t.Logf("config check: %s", out)
	os.WriteFile(d.cfg, []byte(good), 0o600)

	d.start()
	body := []byte("From: alice@example.org\r\nSubject: x\r\n\r\nhi\r\n")
	if _, err := submit(d.starttls, "alice", "alice-pw", "alice@example.org", "x@dest.test", body); err != nil {
		t.Fatalf("directory user: %v", err)
	}
	var se *smtp.SMTPError
	if _, err := submit(d.starttls, "alice", "alice-pw", "bob@example.org", "x@dest.test", body); !errors.As(err, &se) || se.Code != 553 {
		t.Fatalf("another's address: %v", err)
	}
	if _, err := submit(d.starttls, "alice", "wrong", "alice@example.org", "x@dest.test", body); !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("wrong password: %v", err)
	}
	out, err = d.run("", "user", "list")
	if err != nil || !strings.Contains(out, "users of the directory "+srv.TLSURL) {
		t.Fatalf("user list: %v\n%s", err, out)
	}

	// A reload that changes the directory settings applies them, and
	// forgets what the old settings confirmed.
	os.WriteFile(d.cfg, []byte(strings.Replace(good, "sender_attribute: mail", "sender_template: \"{user}@staff.example.org\"", 1)), 0o600)
	if out, err := d.run("", "reload"); err != nil || !strings.Contains(out, "submission.auth.ldap.sender_attribute") {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	if _, err := submit(d.starttls, "alice", "alice-pw", "alice@example.org", "x@dest.test", body); !errors.As(err, &se) || se.Code != 553 {
		t.Fatalf("the old sender after the reload: %v", err)
	}
	if _, err := submit(d.starttls, "alice", "alice-pw", "alice@staff.example.org", "x@dest.test", []byte("From: alice@staff.example.org\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("the template's sender after the reload: %v", err)
	}

	srv.Stop()
	_, err = submit(d.starttls, "bob", "bob-pw", "bob@example.org", "x@dest.test", body)
	if !errors.As(err, &se) || se.Code != 454 || se.EnhancedCode != (smtp.EnhancedCode{4, 7, 0}) {
		t.Fatalf("directory down: %v", err)
	}
	t.Logf("directory down: %v", err)
	if _, err := submit(d.starttls, "alice", "alice-pw", "alice@staff.example.org", "x@dest.test", []byte("From: alice@staff.example.org\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("remembered directory user, directory down: %v", err)
	}
	d.signal(syscall.SIGTERM)
}
