package interop

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// dsnScript parses a message from stdin with Python's email package and
// prints, as JSON, what RFC 3464 requires of a delivery status
// notification, or fails.
const dsnScript = `
import email, email.policy, json, sys
msg = email.message_from_binary_file(sys.stdin.buffer, policy=email.policy.default)
assert msg.get_content_type() == "multipart/report", msg.get_content_type()
assert msg.get_param("report-type") == "delivery-status", msg.get_param("report-type")
parts = list(msg.iter_parts())
assert len(parts) in (2, 3), len(parts)
assert parts[0].get_content_type() == "text/plain", parts[0].get_content_type()
assert parts[1].get_content_type() == "message/delivery-status", parts[1].get_content_type()
if len(parts) == 3:
    assert parts[2].get_content_type() in ("message/rfc822", "text/rfc822-headers", "message/global"), parts[2].get_content_type()
# The delivery-status body: one block of per-message fields, then one
# block per recipient (RFC 3464 2.1); the email package gives each block
# as a message of its own.
blocks = parts[1].get_payload()
out = {"per_message": dict(blocks[0].items()), "per_recipient": [dict(b.items()) for b in blocks[1:]],
       "returned": parts[2].get_content_type() if len(parts) == 3 else ""}
print(json.dumps(out))
`

type dsn struct {
	PerMessage   map[string]string   `json:"per_message"`
	PerRecipient []map[string]string `json:"per_recipient"`
	Returned     string              `json:"returned"`
}

// TestBounceIsDSN: Postfix refuses a recipient with 550 5.1.1; Postern's
// failure notice reaches the sender (through Postfix again) and Python's
// email package reads it as multipart/report; report-type=delivery-status
// with the fields RFC 3464 2.2 and 2.3 require.
func TestBounceIsDSN(t *testing.T) {
	w := needWorld(t)
	pf := w.receivers[0]
	rcpt := "nobody@" + pf.domain("may")
	s := w.send(t, "bounce", rcpt, "")
	var notice []byte
	deadline := time.Now().Add(30 * time.Second)
	for notice == nil && time.Now().Before(deadline) {
		for _, m := range w.sink.all(s.tok) {
			if m.from == "" && bytes.Contains(m.data, []byte("multipart/report")) {
				notice = m.data
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if notice == nil {
		t.Fatal("no failure notice reached the sender")
	}
	cmd := exec.Command("/usr/bin/python3", "-c", dsnScript)
	cmd.Stdin = bytes.NewReader(notice)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("Python's email package: %v\n%s\n%s", err, out, notice)
	}
	var d dsn
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("parsed: %s", out)
	if !strings.HasPrefix(d.PerMessage["Reporting-MTA"], "dns; "+posternHost) {
		t.Errorf("Reporting-MTA %q", d.PerMessage["Reporting-MTA"])
	}
	if len(d.PerRecipient) != 1 {
		t.Fatalf("%d per-recipient blocks, want 1", len(d.PerRecipient))
	}
	r := d.PerRecipient[0]
	for field, want := range map[string]string{
		"Final-Recipient": "rfc822; " + rcpt,
		"Action":          "failed",
		"Status":          "5.1.1",
		"Remote-MTA":      "dns; " + pf.mxName(),
	} {
		if !strings.EqualFold(r[field], want) {
			t.Errorf("%s: %q, want %q", field, r[field], want)
		}
	}
	if !strings.HasPrefix(r["Diagnostic-Code"], "smtp; 550 5.1.1") {
		t.Errorf("Diagnostic-Code %q", r["Diagnostic-Code"])
	}
	if d.Returned == "" {
		t.Error("the original message (or its header) is not returned")
	}
}

// TestRcptTempfailThenAccept: Postfix answers 450 to one RCPT and 250 to
// the next in the same transaction; the accepted recipient is delivered
// and the other waits for a retry, with Postfix's reply recorded.
func TestRcptTempfailThenAccept(t *testing.T) {
	w := needWorld(t)
	pf := w.receivers[0]
	later, ok := "later@"+pf.domain("may"), "carol@"+pf.domain("may")
	tok := token("rcpt-4xx")
	id, err := w.postern.submit(senderAddr, []string{later, ok}, testMessage(tok, ok, ""))
	if err != nil {
		t.Fatal(err)
	}
	m, found := w.sink.find(tok, 30*time.Second)
	if !found {
		t.Fatal("the accepted recipient never got the message")
	}
	if len(m.rcpts) != 1 || m.rcpts[0] != ok {
		t.Errorf("relayed to %v, want only %s", m.rcpts, ok)
	}
	r, err := w.postern.waitAttempted(id, later, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != "pending" || !strings.Contains(r.LastReply, "450") || !strings.Contains(r.LastReply, "4.2.0") {
		t.Errorf("greylisted recipient: %v %q", r.State, r.LastReply)
	}
	w.postern.cli("", "queue", "hold", id)
}
