package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// exitCase is one row of the README's exit-status table, run against the
// real binary.
type exitCase struct {
	args []string
	want int
	// say is a text the output must contain.
	say string
}

func (d *daemon) checkExits(t *testing.T, where string, cases []exitCase) {
	t.Helper()
	for _, c := range cases {
		out, err := d.run("pw\n", c.args...)
		if got := processExit(err); got != c.want && !(c.want == 0 && err == nil) {
			t.Errorf("%s: postern %s: exit %d, want %d\n%s", where, strings.Join(c.args, " "), got, c.want, out)
		}
		if c.say != "" && !strings.Contains(out, c.say) {
			t.Errorf("%s: postern %s does not say %q:\n%s", where, strings.Join(c.args, " "), c.say, out)
		}
		// An error is said once, not by the command and again by main.
		if n := strings.Count(out, "nosuch"); c.want == exitUnknown && n > 1 {
			t.Errorf("%s: postern %s says its error %d times:\n%s", where, strings.Join(c.args, " "), n, out)
		}
	}
}

// TestExitStatusTable: the exit statuses of README.md's table, with and
// without a running daemon: 2 for bad usage (an unknown subcommand, a bad
// flag value, a missing argument) and bad configuration, 3 for an unknown
// message or user, 1 for "not running".
func TestExitStatusTable(t *testing.T) {
	d := newDaemon(t, nil)
	usage := []exitCase{
		{args: []string{"queue", "frobnicate"}, want: exitUsage, say: `unknown command "frobnicate" for "postern queue"`},
		{args: []string{"frobnicate"}, want: exitUsage, say: `unknown command "frobnicate" for "postern"`},
		{args: []string{"queue", "list", "--older-than", "4"}, want: exitUsage, say: "missing unit in duration"},
		{args: []string{"queue", "list", "--no-such-flag"}, want: exitUsage},
		{args: []string{"queue", "show"}, want: exitUsage},
		{args: []string{"user", "require-tls", "app"}, want: exitUsage},
		{args: []string{"queue"}, want: exitOK, say: "Available Commands"},
	}
	unknown := []exitCase{
		{args: []string{"user", "delete", "nosuch"}, want: exitUnknown},
		{args: []string{"user", "require-tls", "nosuch", "on"}, want: exitUnknown},
		{args: []string{"user", "passwd", "nosuch", "--password-stdin"}, want: exitUnknown},
		{args: []string{"queue", "show", "nosuch"}, want: exitUnknown},
		{args: []string{"queue", "bounce", "nosuch"}, want: exitUnknown},
		{args: []string{"queue", "hold", "nosuch"}, want: exitUnknown},
	}
	d.checkExits(t, "stopped", usage)
	d.checkExits(t, "stopped", unknown)
	d.checkExits(t, "stopped", []exitCase{
		{args: []string{"reload"}, want: exitError1, say: filepath.Join(d.dataDir, "admin", "admin.sock")},
	})

	d.start()
	d.checkExits(t, "running", unknown)
	d.checkExits(t, "running", usage)
	// A configuration the daemon refuses on reload: the CLI reads a good
	// copy (to find the socket), the daemon re-reads its own, now bad.
	good := filepath.Join(t.TempDir(), "good.yaml")
	b, _ := os.ReadFile(d.cfg)
	os.WriteFile(good, b, 0o600)
	os.WriteFile(d.cfg, append(b, "bogus_key: 1\n"...), 0o600)
	out, err := exec.Command(d.bin, "reload", "-c", good).CombinedOutput()
	if processExit(err) != exitUsage || !strings.Contains(string(out), "bogus_key") {
		t.Errorf("reload of a configuration the daemon refuses: exit %d, want 2\n%s", processExit(err), out)
	}
	// The CLI's own configuration bad: 2 as well.
	d.checkExits(t, "running", []exitCase{{args: []string{"reload"}, want: exitUsage}})
	d.signal(syscall.SIGTERM)
}

// TestDebugLogging: log.level debug logs more: each submission session and
// command, and each request on the admin socket.
func TestDebugLogging(t *testing.T) {
	d := newDaemon(t, nil)
	d.editConfig("level: info", "level: debug")
	if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d.start()
	if _, err := submit(d.starttls, "app", "pw", "app@example.org", "rcpt@stuck.test", []byte("Subject: x\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	d.run("", "queue", "list")
	for _, want := range []struct{ msg, key, value string }{
		{"submission session opened", "client_ip", "127.0.0.1"},
		{"RCPT", "rcpt", "rcpt@stuck.test"},
		{"submission session closed", "user", "app"},
		{"admin socket request", "path", "/v1/queue"},
	} {
		if d.waitLog(func(l map[string]any) bool {
			return l["level"] == "DEBUG" && l["msg"] == want.msg && l[want.key] == want.value
		}) == nil {
			t.Errorf("no debug line %q with %s=%s", want.msg, want.key, want.value)
		}
	}
	d.signal(syscall.SIGTERM)
}
