package queue

import (
	"strings"
	"time"
)

// State is where one recipient of a message stands.
type State uint8

const (
	Pending   State = iota // waiting for its due time (first try or a retry)
	Leased                 // a worker holds it until the lease deadline
	Delivered              // final: the next hop accepted it
	Failed                 // final: it will not be delivered
)

func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Leased:
		return "leased"
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Final reports whether no more attempts will be made.
func (s State) Final() bool { return s == Delivered || s == Failed }

// Envelope is what the submitter said about a message, plus who submitted it.
// The notification fields are kept verbatim for whoever builds reports later.
type Envelope struct {
	From       string      `json:"from"`
	Recipients []Recipient `json:"rcpts"`
	// Return and EnvelopeID are the sender's notification preferences
	// (what to return with a report, and an identifier to quote in it).
	Return     string `json:"ret,omitempty"`
	EnvelopeID string `json:"envid,omitempty"`
	RequireTLS bool   `json:"requiretls,omitempty"`
	// TLSReport marks a TLS report (RFC 8460): its delivery is not held to
	// the recipient's published TLS policy, nor reported itself.
	TLSReport bool `json:"tls_report,omitempty"`
	// MessageID is the message's Message-ID header, for evidence and logs.
	MessageID string `json:"message_id,omitempty"`
	// TLSOptional: the message says "TLS-Required: No" (RFC 8689 5).
	TLSOptional bool   `json:"tls_optional,omitempty"`
	UTF8        bool   `json:"utf8,omitempty"`
	BodyType    string `json:"body,omitempty"`
	AuthUser    string `json:"user,omitempty"`
	ClientIP    string `json:"ip,omitempty"`
	// Arrival is set by Enqueue when zero.
	Arrival time.Time `json:"arrival"`
}

// Recipient is one address of a message with its own progress.
type Recipient struct {
	Addr string `json:"addr"`
	// Notify and Original are the per-recipient notification preferences
	// given at submission (which outcomes to report, and the original address).
	Notify   []string `json:"notify,omitempty"`
	Original string   `json:"orcpt,omitempty"`

	State State `json:"state"`
	// Due is the next attempt time while Pending, the lease deadline while Leased.
	Due         time.Time `json:"due"`
	Attempts    int       `json:"attempts,omitempty"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastReply   string    `json:"last_reply,omitempty"`
	LastHost    string    `json:"last_host,omitempty"` // the server that gave LastReply, if any
	// LastStatus is LastReply's enhanced status code (RFC 3463), where the
	// outcome carried one (Outcome.Status).
	LastStatus string `json:"last_status,omitempty"`
	// DelayNotified records that a delay notice was sent for this recipient.
	DelayNotified bool      `json:"delay_notified,omitempty"`
	FinalAt       time.Time `json:"final_at,omitzero"`
	// Lease identifies the lease that holds the recipient while Leased.
	Lease uint64 `json:"lease,omitempty"`
}

// Message is a queued message as stored: its envelope and bookkeeping.
type Message struct {
	ID string `json:"id"`
	Envelope
	Size    int64 `json:"size"`
	Spooled bool  `json:"spooled,omitempty"` // body is a file in the spool directory
	Held    bool  `json:"held,omitempty"`
	// ExportHeld: the message was written to a queue export (see Export)
	// and is not scheduled here, so that it is not delivered both here and
	// where it is imported. Release gives it back to delivery.
	ExportHeld bool `json:"export_held,omitempty"`
	// Imports counts the queue hand-overs the message went through (see
	// Import): it tells a message that comes back after moving away from
	// a second import of the same export.
	Imports int `json:"imports,omitempty"`

	// LeaseSeq numbers the leases taken on this message.
	LeaseSeq uint64 `json:"lease_seq,omitempty"`
	// RetireDue and RetireSeq describe the lease to retire a finished message.
	RetireDue time.Time `json:"retire_due,omitzero"`
	RetireSeq uint64    `json:"retire_seq,omitempty"`

	// BodyGone is set by Get and List (never stored) when the message's
	// body cannot be found: it can be neither delivered nor returned, and
	// its notice will say so.
	BodyGone bool `json:"body_gone,omitempty"`
}

// Done reports whether every recipient has a final outcome.
func (m *Message) Done() bool {
	for _, r := range m.Recipients {
		if !r.State.Final() {
			return false
		}
	}
	return true
}

// Domain returns the part of an address after the last '@', lower-cased.
func Domain(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

// wake is when the scheduler must next look at m; ok is false when never
// (held messages wait for Release).
func (m *Message) wake() (t time.Time, ok bool) {
	if m.Held || m.ExportHeld {
		return time.Time{}, false
	}
	if m.Done() {
		if m.RetireDue.IsZero() {
			return time.Unix(0, 0), true // retire as soon as possible
		}
		return m.RetireDue, true
	}
	for _, r := range m.Recipients {
		if r.State.Final() {
			continue
		}
		if !ok || r.Due.Before(t) {
			t, ok = r.Due, true
		}
	}
	return t, ok
}

func (m *Message) clone() Message {
	c := *m
	c.Recipients = append([]Recipient(nil), m.Recipients...)
	return c
}
