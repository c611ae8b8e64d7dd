package interop

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// dkimverify runs python3-dkim's verifier on msg for the signature at
// index, with the suite's DNS (the keys are TXT records in knot's
// sender.test zone, resolved through unbound).
func (w *world) dkimverify(msg []byte, index int) (string, error) {
	argv := w.withSuiteDNS("dkimverify", "--index", fmt.Sprint(index))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(msg)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestDKIMVerifies: what Postern signs (RSA-2048 and Ed25519, both keys of
// sender.test) verifies with dkimverify after a real MTA passed it on,
// including a message with folded and 8-bit (UTF-8, RFC 6532) header
// fields.
func TestDKIMVerifies(t *testing.T) {
	w := needWorld(t)
	cases := []struct {
		name, rcpt, headers string
	}{
		{"plain-via-postfix", "bob@" + w.receivers[0].domain("may"), ""},
		{"folded-8bit-via-exim", "bob@" + w.receivers[1].domain("may"),
			"Keywords: a header folded\r\n\tover three\r\n  lines\r\nComments: =?utf-8?q?encoded?= and raw UTF-8: Grüße aus Köln, 東京\r\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := w.send(t, "dkim-"+c.name, c.rcpt, c.headers)
			m, ok := w.sink.find(s.tok, 30*time.Second)
			if !ok {
				t.Fatal("never arrived")
			}
			if n := bytes.Count(m.data, []byte("\nDKIM-Signature:")) + bytes.Count(m.data[:16], []byte("DKIM-Signature:")); n != 2 {
				t.Fatalf("%d DKIM-Signature fields, want 2 (RSA and Ed25519):\n%s", n, headerOf(m.data))
			}
			if c.headers != "" && (!bytes.Contains(m.data, []byte("Grüße aus Köln, 東京")) || !m.utf8) {
				t.Errorf("the 8-bit header did not arrive as sent with SMTPUTF8 (utf8=%v):\n%s", m.utf8, headerOf(m.data))
			}
			// The verifier is not vacuous: a changed body fails.
			if out, err := w.dkimverify(bytes.Replace(m.data, []byte("token "), []byte("t0ken "), 1), 0); err == nil {
				t.Errorf("dkimverify accepted a changed body: %s", out)
			}
			for i, alg := range []string{"rsa-sha256", "ed25519-sha256"} {
				out, err := w.dkimverify(m.data, i)
				if err != nil || out != "signature ok" {
					t.Errorf("dkimverify --index %d (%s): %v: %s\n%s", i, alg, err, out, headerOf(m.data))
				}
			}
		})
	}
}
