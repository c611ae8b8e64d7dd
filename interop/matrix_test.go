package interop

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// outcome is what should become of a message under a policy.
type outcome struct {
	delivered  bool
	tls        bool   // delivered inside TLS
	verifiedBy string // "" (not authenticated), PKIX, DANE-EE, DANE-TA
}

func (o outcome) String() string {
	switch {
	case !o.delivered:
		return "waits (4.7.x)"
	case !o.tls:
		return "delivered, cleartext"
	case o.verifiedBy == "":
		return "delivered, TLS unauthenticated"
	}
	return "delivered, TLS verified by " + o.verifiedBy
}

// expected is the matrix as it must be for a receiver whose TLS works.
var expected = []struct {
	policy string
	want   outcome
}{
	{"may", outcome{delivered: true, tls: true}},
	{"verify", outcome{delivered: true, tls: true, verifiedBy: "PKIX"}},
	{"dane-ee", outcome{delivered: true, tls: true, verifiedBy: "DANE-EE"}},
	{"dane-ta", outcome{delivered: true, tls: true, verifiedBy: "DANE-TA"}},
	{"verify-wrong-name", outcome{}},
	{"dane-mismatch", outcome{}},
	{"encrypt-no-tls", outcome{}},
	{"may-no-tls", outcome{delivered: true}},
}

// expectedFor adjusts the matrix for a receiver whose STARTTLS does not
// work: every policy that needs TLS makes the mail wait; under may, where
// nothing requires TLS, Postern retries in cleartext on a new connection
// (RFC 7435, as Postfix and maddy do), so the mail is delivered without TLS.
func expectedFor(r *receiver, policy string, want outcome) outcome {
	if r.brokenTLS == "" || !want.tls {
		return want
	}
	if policy == "may" {
		return outcome{delivered: true}
	}
	return outcome{}
}

// token makes a string that marks one test message.
func token(label string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return label + "-" + hex.EncodeToString(b)
}

// testMessage is a message with some shape: long (but legal) lines, a
// dot at the start of a line, trailing white space, and an empty line.
func testMessage(tok, to string, extraHeaders string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Alice <%s>\r\nTo: <%s>\r\nSubject: interop %s\r\nMessage-ID: <%s@sender.test>\r\n", senderAddr, to, tok, tok)
	fmt.Fprintf(&b, "Date: %s\r\n%s\r\n", time.Now().UTC().Format(time.RFC1123Z), extraHeaders)
	fmt.Fprintf(&b, "token %s\r\n.leading dot\r\n..two dots\r\ntrailing space  \r\n\r\n%s\r\n", tok, strings.Repeat("x", 990))
	return b.Bytes()
}

// headerOf is the header section.
func headerOf(msg []byte) []byte {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[:i+2]
	}
	return msg
}

// bodyOf is everything after the header section.
func bodyOf(msg []byte) []byte {
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		return msg[i+4:]
	}
	return nil
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

// sent is a message submitted to Postern, and how to recognize it.
type sent struct {
	label, rcpt, tok, id string
	content              []byte
}

func (w *world) send(t *testing.T, label, rcpt, extraHeaders string) sent {
	t.Helper()
	tok := token(label)
	s := sent{label: label, rcpt: rcpt, tok: tok, content: testMessage(tok, rcpt, extraHeaders)}
	var err error
	if s.id, err = w.postern.submit(senderAddr, []string{rcpt}, s.content); err != nil {
		t.Fatalf("%s: submit to %s: %v", label, rcpt, err)
	}
	return s
}

// outcomeOf waits for what happened to s: delivery (seen at the sink, with
// Postern's evidence), or a wait (a temporary failure recorded in the
// queue, nothing at the sink).
func (w *world) outcomeOf(s sent, expectDelivery bool) (outcome, string, error) {
	timeout := 30 * time.Second
	if !expectDelivery {
		r, err := w.postern.waitAttempted(s.id, s.rcpt, timeout)
		if err != nil {
			// Delivered after all? Look before reporting.
			if _, ok := w.sink.lookup(s.tok); !ok {
				return outcome{}, "", err
			}
		} else {
			// Hold it: it would be retried for the rest of the run.
			w.postern.cli("", "queue", "hold", s.id)
			if _, ok := w.sink.lookup(s.tok); !ok {
				// A policy that cannot be met is a temporary failure
				// with a 4.7.x status (the message waits, never bounces).
				if !strings.HasPrefix(r.LastReply, "4.7.") && !strings.Contains(r.LastReply, " 4.7.") {
					return outcome{}, r.LastReply, fmt.Errorf("waiting, but the reason is not 4.7.x: %q", r.LastReply)
				}
				return outcome{}, r.LastReply, nil
			}
		}
	}
	m, ok := w.sink.find(s.tok, timeout)
	if !ok {
		msg, _ := w.postern.message(s.id)
		return outcome{}, "", fmt.Errorf("never reached the sink; queue: %+v", msg)
	}
	if got, want := sum(bodyOf(m.data)), sum(bodyOf(s.content)); got != want {
		return outcome{}, "", fmt.Errorf("body changed in transit: sha256 %s, sent %s\n%q", got, want, m.data)
	}
	rec, err := w.postern.waitAudit(s.rcpt, 10*time.Second)
	if err != nil {
		return outcome{}, "", err
	}
	o := outcome{delivered: true, tls: rec.TLSVersion != ""}
	if rec.Verified {
		o.verifiedBy = rec.VerifiedBy
	}
	return o, fmt.Sprintf("%s %s policy=%q reply=%q", rec.TLSVersion, rec.TLSCipher, rec.PolicyMode, rec.Reply), nil
}

// TestReceiverMatrix delivers to every receiving MTA under every policy of
// the matrix, all at once, and checks each outcome.
func TestReceiverMatrix(t *testing.T) {
	w := needWorld(t)
	type cell struct {
		r    *receiver
		pol  string
		want outcome
		s    sent
	}
	var cells []*cell
	for _, r := range w.receivers {
		for _, e := range expected {
			c := &cell{r: r, pol: e.policy, want: expectedFor(r, e.policy, e.want)}
			c.s = w.send(t, r.name+"-"+e.policy, "bob@"+r.domain(e.policy), "")
			cells = append(cells, c)
		}
	}
	var mu sync.Mutex
	var table []string
	t.Run("cells", func(t *testing.T) {
		for _, c := range cells {
			t.Run(c.r.name+"/"+c.pol, func(t *testing.T) {
				t.Parallel()
				got, detail, err := w.outcomeOf(c.s, c.want.delivered)
				if err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				table = append(table, fmt.Sprintf("%-10s %-18s %-40s %s", c.r.name, c.pol, got, detail))
				mu.Unlock()
				if got != c.want {
					t.Errorf("%s under %s: %s, want %s (%s)", c.r.name, c.pol, got, c.want, detail)
				}
			})
		}
	})
	sort.Strings(table)
	t.Logf("matrix:\n%s", strings.Join(table, "\n"))
}

// TestDNSSECCases: DNS shapes delivered to Postfix.
func TestDNSSECCases(t *testing.T) {
	w := needWorld(t)
	cases := []struct {
		name, rcpt string
		want       outcome
	}{
		{"mx-cname-to-dane-ee", "bob@cname.test", outcome{delivered: true, tls: true, verifiedBy: "DANE-EE"}},
		{"unsigned-tlsa-ignored", "bob@unsigned.test", outcome{delivered: true, tls: true}},
		{"bogus-signature", "bob@bogus.test", outcome{}},
		{"unusable-tlsa-only", "bob@unusable.test", outcome{delivered: true, tls: true}},
	}
	var sends []sent
	for _, c := range cases {
		sends = append(sends, w.send(t, c.name, c.rcpt, ""))
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, detail, err := w.outcomeOf(sends[i], c.want.delivered)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %s (%s)", c.rcpt, got, detail)
			if got != c.want {
				t.Errorf("%s: %s, want %s (%s)", c.rcpt, got, c.want, detail)
			}
		})
	}
}
