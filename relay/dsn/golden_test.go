package dsn

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current output")

// TestGolden compares each report, byte for byte, with testdata/NAME.eml
// (the boundary, random in real reports, made fixed). testdata/README says
// what each case proves; `go test ./relay/dsn -run Golden -update` rewrites
// the files after a deliberate change, which the diff then shows.
func TestGolden(t *testing.T) {
	arrival := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	attempt := time.Date(2026, 11, 29, 10, 30, 0, 0, time.UTC)
	base := Notice{ReportingMTA: "relay.example", From: "MAILER-DAEMON@relay.example", To: "app@example.org",
		EnvelopeID: "env-42", Arrival: arrival, Date: attempt}
	with := func(n Notice, f func(*Notice)) Notice { f(&n); return n }
	cases := []struct {
		name     string
		notice   Notice
		original []byte
	}{
		{"01-failed-full", with(base, func(n *Notice) {
			n.Recipients = []Recipient{{Final: "a@dest.test", Original: "rfc822;a@dest.test", Action: Failed, Status: "5.1.1",
				RemoteMTA: "mx.dest.test", Diagnostic: "550 5.1.1 no such user", LastAttempt: attempt}}
		}), original},
		{"02-failed-headers-only", with(base, func(n *Notice) {
			n.HeadersOnly = true
			n.Recipients = []Recipient{{Final: "a@dest.test", Action: Failed, Status: "5.7.30",
				Diagnostic: "5.7.30 REQUIRETLS: mx.dest.test comes neither from a DNSSEC-secure MX lookup nor from an MTA-STS policy", LastAttempt: attempt}}
		}), original},
		{"03-delayed", with(base, func(n *Notice) {
			n.Recipients = []Recipient{{Final: "a@dest.test", Action: Delayed, Status: "4.7.5", RemoteMTA: "mx.dest.test",
				Diagnostic:  "4.7.5 TLS with mx.dest.test failed (dane: 1 usable TLSA records at _25._tcp.mx.dest.test)",
				LastAttempt: attempt, WillRetryUntil: arrival.Add(5 * 24 * time.Hour)}}
		}), original},
		{"04-relayed", with(base, func(n *Notice) {
			n.HeadersOnly = true
			n.Recipients = []Recipient{RelayedTo("a@dest.test", "rfc822;a@dest.test", "smarthost.example", attempt)}
		}), original},
		{"05-internationalised", with(base, func(n *Notice) {
			n.To = "jörg@example.org"
			n.Recipients = []Recipient{{Final: "zoë@dest.test", Original: "utf-8;zoë@dest.test", Action: Failed, Status: "5.6.7",
				RemoteMTA: "mx.dest.test", Diagnostic: "5.6.7 mx.dest.test does not support SMTPUTF8, which this message needs", LastAttempt: attempt}}
		}), []byte("From: jörg@example.org\r\nTo: zoë@dest.test\r\nSubject: grüße\r\n\r\nbody\r\n")},
		{"06-original-lost", with(base, func(n *Notice) {
			n.OriginalLost = true
			n.Recipients = []Recipient{{Final: "a@dest.test", Action: Failed, Status: "4.4.7",
				Diagnostic: "4.4.7 message expired after 5 days in the queue", LastAttempt: attempt}}
		}), nil},
		{"07-two-recipients", with(base, func(n *Notice) {
			n.Recipients = []Recipient{
				{Final: "a@dest.test", Action: Failed, Status: "5.1.1", RemoteMTA: "mx.dest.test", Diagnostic: "550 5.1.1 no such user", LastAttempt: attempt},
				{Final: "b@other.test", Action: Failed, Status: "5.1.10", Diagnostic: "5.1.10 domain other.test accepts no mail (null MX)", LastAttempt: attempt},
			}
		}), original},
	}
	boundary := regexp.MustCompile(`postern-[0-9a-f]{32}`)
	messageID := regexp.MustCompile(`<postern-[0-9a-f]{16}@`) // made from the boundary
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Build(tc.notice, tc.original)
			parse(t, got) // still a report a mail client reads
			got = boundary.ReplaceAll(got, []byte("postern-0123456789abcdef0123456789abcdef"))
			got = messageID.ReplaceAll(got, []byte("<postern-0123456789abcdef@"))
			file := filepath.Join("testdata", tc.name+".eml")
			if *update {
				if err := os.WriteFile(file, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the golden file (run with -update after a deliberate change):\n--- got\n%s\n--- want\n%s", file, got, want)
			}
		})
	}
}
