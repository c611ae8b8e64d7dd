package submission

import (
	"strings"
	"testing"

	"github.com/postern/postern/relay/auth"
)

const msg = "From: app@example.org\r\nSubject: x\r\n\r\nhi\r\n.\r\n"

// TestSendingLimits: past its hourly limits a credential gets 450 4.7.1,
// for messages at MAIL and for recipients at RCPT; a user's own limits
// replace the defaults; only queued messages count.
func TestSendingLimits(t *testing.T) {
	h := newHarness(t, func(c *Config, _ *auth.Limits) {
		c.SendingLimits.MessagesPerHour, c.SendingLimits.RecipientsPerHour = 2, 3
	})
	unlimited := 0
	h.users.SetSendingLimit("free", auth.LimitMessages, &unlimited)
	h.users.SetSendingLimit("free", auth.LimitRecipients, &unlimited)

	r := h.loggedIn(testUser)
	// A transaction abandoned before DATA counts nothing.
	r.expect("MAIL FROM:<app@example.org>", "250")
	r.expect("RCPT TO:<a@dest.test>", "250")
	r.expect("RSET", "250")
	r.expect("MAIL FROM:<app@example.org>", "250")
	r.expect("RCPT TO:<a@dest.test>", "250")
	r.expect("RCPT TO:<b@dest.test>", "250")
	r.sendData(msg)
	r.expect("MAIL FROM:<app@example.org>", "250")
	r.expect("RCPT TO:<c@dest.test>", "250")
	r.expect("RCPT TO:<d@dest.test>", "450 4.7.1 Recipient limit for this credential reached (3 per hour)")
	if got := r.sendData(msg); got[:3] != "250" {
		t.Fatalf("DATA with the recipients accepted: %s", got)
	}
	r.expect("MAIL FROM:<app@example.org>", "450 4.7.1 Message limit for this credential reached (2 per hour)")
	if h.count() != 2 {
		t.Fatalf("%d queued, want 2", h.count())
	}

	// Another credential, with its own limits (0: unlimited), is not held back.
	f := h.loggedIn("free")
	for i := 0; i < 3; i++ {
		f.expect("MAIL FROM:<app@example.org>", "250")
		f.expect("RCPT TO:<a@dest.test>", "250")
		f.expect("RCPT TO:<b@dest.test>", "250")
		f.sendData(msg)
	}

	// Suspended: stopped at once, in a session already logged in and in a
	// transaction already begun.
	f.expect("MAIL FROM:<app@example.org>", "250")
	if err := h.quota.Suspend("free", true); err != nil {
		t.Fatal(err)
	}
	f.expect("RCPT TO:<a@dest.test>", "450 4.7.1 Sending is suspended for this credential")
	f.expect("RSET", "250")
	f.expect("MAIL FROM:<app@example.org>", "450 4.7.1 Sending is suspended for this credential")
	// Suspended between RCPT and DATA: the data is refused, not queued.
	h.quota.Suspend("free", false)
	f.expect("MAIL FROM:<app@example.org>", "250")
	f.expect("RCPT TO:<a@dest.test>", "250")
	h.quota.Suspend("free", true)
	before := h.count()
	if got := f.sendData(msg); !strings.HasPrefix(got, "450 4.7.1 Sending is suspended") || h.count() != before {
		t.Fatalf("DATA after a suspension: %s (%d queued, were %d)", got, h.count(), before)
	}
}
