// Package audit keeps the delivery evidence a compliance team asks for: for
// every recipient delivered, bounced or expired, how the message left (MX,
// address, TLS version and cipher, the peer certificate's SHA-256, the TLS
// policy and how the peer was authenticated) and what the next hop said.
// Records are written into the queue's journal in the same transaction as
// the outcome they describe, so evidence exists exactly when the outcome does.
package audit

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/postern/postern/internal/mailname"
	"github.com/postern/postern/queue"
)

// Result says how a recipient's delivery ended.
const (
	Delivered = "delivered"
	Bounced   = "bounced"
	Expired   = "expired"
)

// Record is the evidence for one recipient.
type Record struct {
	Time           time.Time `json:"time"`
	QueueID        string    `json:"queue_id"`
	MessageID      string    `json:"message_id,omitempty"`
	Sender         string    `json:"sender"`
	Recipient      string    `json:"recipient"`
	Result         string    `json:"result"`
	MX             string    `json:"mx,omitempty"`
	IP             string    `json:"ip,omitempty"`
	TLSVersion     string    `json:"tls_version,omitempty"`
	TLSCipher      string    `json:"tls_cipher,omitempty"`
	PeerCertSHA256 string    `json:"peer_cert_sha256,omitempty"`
	PolicySource   string    `json:"policy_source,omitempty"` // dane, mta-sts, local, default, route, memory
	PolicyMode     string    `json:"policy_mode,omitempty"`   // e.g. "dane", "mta-sts verify", "default may"
	Verified       bool      `json:"verified"`
	VerifiedBy     string    `json:"verified_by,omitempty"` // DANE-EE, DANE-TA, PKIX
	// TLSFallback, when set, is why the message went in cleartext: STARTTLS
	// failed where TLS was opportunistic, and delivery was retried without.
	TLSFallback string `json:"tls_fallback,omitempty"`
	Reply       string `json:"reply"`
	// SourceIP is the local address the delivery left from
	// (delivery.source_addresses, a route's source_address, or the kernel's choice).
	SourceIP string `json:"source_ip,omitempty"`
}

// Kind is the first byte of an audit record in the journal, which other
// packages share (TLS report data has its own).
const Kind = 'A'

// Encode is the record as stored in the journal.
func (r Record) Encode() []byte {
	b, _ := json.Marshal(r)
	return append([]byte{Kind}, b...)
}

// Decode reads a journal entry; ok is false for entries of other kinds,
// and for a record that does not decode (err says why).
func Decode(entry []byte) (r Record, ok bool, err error) {
	if len(entry) == 0 || entry[0] != Kind {
		return r, false, nil
	}
	if err := json.Unmarshal(entry[1:], &r); err != nil {
		return r, false, err
	}
	return r, true, nil
}

// Filter selects records; zero fields select everything.
type Filter struct {
	RcptDomain string
	Since      time.Time
	Until      time.Time
	MessageID  string
}

func (f Filter) matches(r Record) bool {
	if f.RcptDomain != "" && queue.Domain(r.Recipient) != mailname.Normalize(f.RcptDomain) {
		return false
	}
	// MessageID is a Message-ID (with or without its angle brackets) or a
	// queue ID: a Message-ID has an "@" (RFC 5322 3.6.4) and a queue ID
	// none, so the two cannot be confused.
	if f.MessageID != "" && strings.Trim(r.MessageID, "<>") != strings.Trim(f.MessageID, "<>") && r.QueueID != f.MessageID {
		return false
	}
	return true
}

// Journal is where records are read from: the queue.
type Journal interface {
	ReadJournal(from, to time.Time, fn func(queue.JournalEntry) bool) error
}

// Query returns the records that match f, oldest first.
func Query(j Journal, f Filter) ([]Record, error) {
	var out []Record
	var bad error
	err := j.ReadJournal(f.Since, f.Until, func(e queue.JournalEntry) bool {
		r, ok, err := Decode(e.Data)
		if err != nil {
			bad = fmt.Errorf("journal entry of %s: %w", e.Time.Format(time.RFC3339), err)
		}
		if !ok {
			return true
		}
		if f.matches(r) {
			out = append(out, r)
		}
		return true
	})
	if err == nil {
		err = bad
	}
	return out, err
}
