package main

import (
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/auth"
)

// The --json output of the CLI is an interface of its own: states are
// words, a message says its own state, and the queue's bookkeeping (lease
// numbers, retirement) and the users' password hashes stay inside. The
// admin socket still carries the stored types; these are made at the end.

// messageView is a queued message as "queue list --json" and "queue show
// --json" print it.
type messageView struct {
	ID          string          `json:"id"`
	State       string          `json:"state"` // active, deferred or held
	Arrival     time.Time       `json:"arrival"`
	From        string          `json:"from"`
	Size        int64           `json:"size"`
	MessageID   string          `json:"message_id,omitempty"`
	User        string          `json:"user,omitempty"`
	ClientIP    string          `json:"client_ip,omitempty"`
	RequireTLS  bool            `json:"requiretls"`
	TLSOptional bool            `json:"tls_required_no,omitempty"`
	Return      string          `json:"ret,omitempty"`
	EnvelopeID  string          `json:"envid,omitempty"`
	Pending     int             `json:"pending"` // recipients still to deliver
	Recipients  []recipientView `json:"recipients"`
}

// recipientView is one recipient of a messageView.
type recipientView struct {
	Addr        string     `json:"addr"`
	State       string     `json:"state"` // pending, in-flight, delivered or failed
	Attempts    int        `json:"attempts"`
	LastAttempt *time.Time `json:"last_attempt,omitempty"`
	// Next is the next attempt while pending.
	Next      *time.Time `json:"next_attempt,omitempty"`
	LastHost  string     `json:"last_host,omitempty"`
	LastReply string     `json:"last_reply,omitempty"`
	FinalAt   *time.Time `json:"final_at,omitempty"`
	Notify    []string   `json:"notify,omitempty"`
	ORCPT     string     `json:"orcpt,omitempty"`
}

func newMessageView(m queue.Message) messageView {
	v := messageView{ID: m.ID, State: m.State(), Arrival: m.Arrival, From: m.From, Size: m.Size, MessageID: m.MessageID,
		User: m.AuthUser, ClientIP: m.ClientIP, RequireTLS: m.RequireTLS, TLSOptional: m.TLSOptional, Return: m.Return,
		EnvelopeID: m.EnvelopeID, Recipients: []recipientView{}}
	for _, r := range m.Recipients {
		rv := recipientView{Addr: r.Addr, State: recipientState(r.State), Attempts: r.Attempts, LastHost: r.LastHost,
			LastReply: r.LastReply, Notify: r.Notify, ORCPT: r.Original, LastAttempt: timeOrNil(r.LastAttempt), FinalAt: timeOrNil(r.FinalAt)}
		if r.State == queue.Pending {
			rv.Next = timeOrNil(r.Due)
		}
		if !r.State.Final() {
			v.Pending++
		}
		v.Recipients = append(v.Recipients, rv)
	}
	return v
}

func newMessageViews(msgs []queue.Message) []messageView {
	out := make([]messageView, 0, len(msgs)) // an empty list is [], not null
	for _, m := range msgs {
		out = append(out, newMessageView(m))
	}
	return out
}

// recipientState names a recipient's state for people: a leased recipient
// is one a delivery worker is trying now.
func recipientState(s queue.State) string {
	if s == queue.Leased {
		return "in-flight"
	}
	return s.String()
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// userView is a user as "user list --json" prints it: no password hash.
type userView struct {
	Name       string    `json:"name"`
	AllowFrom  []string  `json:"allow_from"` // empty: any sender
	RequireTLS bool      `json:"require_tls"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
}

func newUserViews(users []auth.User) []userView {
	out := make([]userView, 0, len(users))
	for _, u := range users {
		allow := u.AllowFrom
		if allow == nil {
			allow = []string{}
		}
		out = append(out, userView{Name: u.Name, AllowFrom: allow, RequireTLS: u.RequireTLS, Created: u.Created, Updated: u.Updated})
	}
	return out
}
