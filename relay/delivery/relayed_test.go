package delivery

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
)

// NOTIFY=SUCCESS to a next hop without the DSN extension gets Postern's own
// "relayed" report (RFC 3461 5.2.2), headers only, naming the hop; a hop
// with DSN is left to report itself, and NOTIFY without SUCCESS asks for
// nothing.
func TestRelayedDSNWhenNextHopLacksDSN(t *testing.T) {
	for _, tc := range []struct {
		name      string
		hopDSN    bool
		notify    []string
		wantNotes int
	}{
		{"hop without DSN, SUCCESS asked", false, []string{"SUCCESS", "FAILURE"}, 1},
		{"hop with DSN, SUCCESS asked", true, []string{"SUCCESS"}, 0},
		{"hop without DSN, only FAILURE asked", false, []string{"FAILURE"}, 0},
		{"hop without DSN, no NOTIFY", false, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mx := smtptest.Start(t, func(mx *smtptest.MX) { mx.Server.EnableDSN = tc.hopDSN })
			w := newWorld(t, mx)
			env := queue.Envelope{From: sender, EnvelopeID: "env7", Recipients: []queue.Recipient{
				{Addr: "a@dest.test", Notify: tc.notify, Original: "rfc822;orig@dest.test"},
				{Addr: "b@dest.test"}}}
			if _, err := w.q.Enqueue("", env, strings.NewReader(body)); err != nil {
				t.Fatal(err)
			}
			w.run()
			w.run() // the report, if one was queued
			notes := w.bounces()
			if len(notes) != tc.wantNotes {
				t.Fatalf("%d notices, want %d: %q", len(notes), tc.wantNotes, notes)
			}
			if tc.hopDSN {
				if got := w.mx.Received()[0].RcptOpt[0].Notify; len(got) != 1 || got[0] != smtp.DSNNotifySuccess {
					t.Fatalf("NOTIFY not passed on to a hop with DSN: %v", got)
				}
			}
			if tc.wantNotes == 0 {
				return
			}
			n := notes[0]
			for _, want := range []string{"Subject: Relayed Mail Delivery Report", "Action: relayed", "Status: 2.0.0",
				"Final-Recipient: rfc822; a@dest.test", "Original-Recipient: rfc822;orig@dest.test",
				"Remote-MTA: dns; mx.dest.test", "Original-Envelope-Id: env7", "text/rfc822-headers"} {
				if !strings.Contains(n, want) {
					t.Errorf("relayed report lacks %q:\n%s", want, n)
				}
			}
			if !strings.HasPrefix(n, sender) || strings.Contains(n, "b@dest.test") || strings.Contains(n, ".dot line") {
				t.Errorf("report to the wrong address, naming a recipient that asked for nothing, or with the body:\n%s", n)
			}
		})
	}
}
