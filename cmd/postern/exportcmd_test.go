package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/relay/smtptest"
)

// listQueue is "queue list --json" on d.
func listQueue(t *testing.T, d *daemon) []messageView {
	t.Helper()
	out, err := d.run("", "queue", "list", "--json")
	var msgs []messageView
	if err != nil || json.Unmarshal([]byte(out), &msgs) != nil {
		t.Fatalf("queue list: %v %s", err, out)
	}
	return msgs
}

// TestQueueHandOver: node A cannot deliver (its next hop defers every
// recipient) and is retired; its queue goes to node B by export and
// import, and B delivers it.
func TestQueueHandOver(t *testing.T) {
	a := newDaemon(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(string) error {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "not from node A, try later"}
		}
	})
	b := newDaemon(t, nil)
	for _, d := range []*daemon{a, b} {
		if out, err := d.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	a.start()
	bodies := map[string]string{
		"small": "Subject: small\r\n\r\nx\r\n",
		"big":   "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("b", 98)+"\r\n", 2000), // spooled
	}
	sent := map[string]string{} // queue ID on A: body
	for _, body := range bodies {
		reply, err := submit(a.starttls, "app", "pw", "app@example.org", "rcpt@dest.test", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		sent[queueID(reply)] = body
	}
	var before []messageView
	eventually(t, 20*time.Second, func() bool {
		before = listQueue(t, a)
		return len(before) == 2 && before[0].State == "deferred" && before[1].State == "deferred"
	})
	if len(before) != 2 || before[0].Recipients[0].Attempts != 1 {
		t.Fatalf("node A's queue: %+v", before)
	}

	out, _ := a.run("", "queue", "list")
	t.Logf("node A$ postern queue list\n%s", out)
	dir := filepath.Join(t.TempDir(), "handover")
	out, err := a.run("", "queue", "export", dir, "--remove")
	t.Logf("node A$ postern queue export %s --remove\n%s", dir, out)
	if err != nil || !strings.Contains(out, "exported 2 messages") || !strings.Contains(out, "removed the 2 exported messages") {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if left := listQueue(t, a); len(left) != 0 {
		t.Fatalf("node A keeps %d messages", len(left))
	}
	a.signal(syscall.SIGTERM)

	b.start()
	out, err = b.run("", "queue", "import", dir)
	t.Logf("node B$ postern queue import %s\n%s", dir, out)
	if err != nil || !strings.Contains(out, "imported 2 of the 2 messages") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	out, err = b.run("", "queue", "import", dir)
	t.Logf("node B$ postern queue import %s\n%s", dir, out)
	if err != nil || !strings.Contains(out, "imported 0 of the 2 messages") || !strings.Contains(out, "2 were imported before") {
		t.Fatalf("second import: %v\n%s", err, out)
	}
	// Everything A knew arrived: same IDs, arrival, attempts, last reply.
	after := listQueue(t, b)
	if len(after) != 2 {
		t.Fatalf("node B's queue: %+v", after)
	}
	for i, m := range after {
		want := before[i]
		r, w := m.Recipients[0], want.Recipients[0]
		if m.ID != want.ID || !m.Arrival.Equal(want.Arrival) || m.Size != want.Size || r.Attempts != 1 || r.LastReply != w.LastReply ||
			r.Next == nil || w.Next == nil || !r.Next.Equal(*w.Next) || m.User != "app" || m.State != "deferred" {
			t.Fatalf("imported message %d:\n got %+v\nwant %+v", i, m, want)
		}
	}
	out, _ = b.run("", "queue", "list")
	t.Logf("node B$ postern queue list\n%s", out)
	if out, err := b.run("", "queue", "flush"); err != nil {
		t.Fatalf("flush: %v %s", err, out)
	}
	for range sent {
		select {
		case <-b.sink.Arrived:
		case <-time.After(20 * time.Second):
			t.Fatal("node B did not deliver the imported messages")
		}
	}
	got := map[string]bool{}
	for _, m := range b.sink.Received() {
		got[strings.ReplaceAll(string(m.Data), "\r\n", "\n")] = true
	}
	for id, body := range sent {
		found := false
		for data := range got {
			found = found || strings.HasSuffix(data, strings.ReplaceAll(body, "\r\n", "\n"))
		}
		if !found {
			t.Errorf("message %s was not delivered by node B", id)
		}
	}
	b.signal(syscall.SIGTERM)
}

// TestQueueExportImportOffline: with no daemon running, both commands
// work on the files, and the export directory follows backup's rules.
func TestQueueExportImportOffline(t *testing.T) {
	a, b, id := stoppedWithOneQueued(t)

	parent := t.TempDir()
	os.Chmod(parent, 0o777)
	if out, err := a.run("", "queue", "export", filepath.Join(parent, "x")); err == nil || !strings.Contains(out, "export: "+parent+" is writable by others") {
		t.Fatalf("export below a directory others can write in: %v %s", err, out)
	}
	os.Chmod(parent, 0o700)
	dir := filepath.Join(parent, "handover")
	out, err := a.run("", "queue", "export", dir)
	if err != nil || !strings.Contains(out, "exported 1 messages") || !strings.Contains(out, "stay in this queue, held (state exported)") {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if out, err := a.run("", "queue", "list", "--state", "exported"); err != nil || !strings.Contains(out, id) {
		t.Fatalf("exported messages on node A: %v\n%s", err, out)
	}
	// A non-empty DIR is refused, as for a backup.
	if out, err := a.run("", "queue", "export", dir); err == nil || !strings.Contains(out, "is not empty") {
		t.Fatalf("export into a non-empty directory: %v %s", err, out)
	}
	// A file of the export that others can write to is not trusted.
	eml := filepath.Join(dir, "messages", id+".eml")
	os.Chmod(eml, 0o666)
	if out, err := b.run("", "queue", "import", dir); err == nil || !strings.Contains(out, "writable by others") {
		t.Fatalf("import of a file others can write: %v %s", err, out)
	}
	if n := len(listQueue(t, b)); n != 0 {
		t.Fatalf("%d messages imported from a refused export", n)
	}
	os.Chmod(eml, 0o600)
	if out, err := b.run("", "queue", "import", dir); err != nil || !strings.Contains(out, "imported 1 of the 1 messages") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	// A damaged export is refused whole; --skip-bad leaves the bad out and
	// says so with a failing status.
	data, _ := os.ReadFile(eml)
	data[0] ^= 1
	os.WriteFile(eml, data, 0o600)
	c := newDaemon(t, nil)
	if out, err := c.run("", "queue", "import", dir); err == nil || !strings.Contains(out, "body checksum mismatch") || !strings.Contains(out, "nothing was imported") {
		t.Fatalf("damaged export: %v %s", err, out)
	}
	if out, err := c.run("", "queue", "import", dir, "--skip-bad"); exitCode(err) != 1 || !strings.Contains(out, "1 messages LEFT OUT") {
		t.Fatalf("--skip-bad: %v %s", err, out)
	}
	if n := len(listQueue(t, c)); n != 0 {
		t.Fatalf("%d messages imported from a damaged export", n)
	}
}

// stoppedWithOneQueued runs daemon a, queues one message there for a
// destination that never answers, and stops a; b is a second daemon, not
// started. It returns both and the message's queue ID.
func stoppedWithOneQueued(t *testing.T) (a, b *daemon, id string) {
	t.Helper()
	a, b = newDaemon(t, nil), newDaemon(t, nil)
	a.start()
	if out, err := a.run("pw\n", "user", "add", "app", "--password-stdin"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	reply, err := submit(a.starttls, "app", "pw", "app@example.org", "rcpt@stuck.test", []byte("Subject: s\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	id = queueID(reply)
	a.signal(syscall.SIGTERM)
	return a, b, id
}
