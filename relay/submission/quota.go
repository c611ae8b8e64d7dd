package submission

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
)

// Quota counts what each credential sends (quota.Counter). Messages are
// checked at MAIL and recipients at RCPT, so a client learns of a limit
// before it sends a body, and a message over the recipient limit keeps the
// recipients accepted before it. What a transaction has been granted is
// held against the limits from MAIL and RCPT on (ReserveMail,
// ReserveRecipient), so that sessions of one credential running at once
// share one limit rather than each passing its checks before any counts;
// it is counted once the message is queued (Add), and given back when the
// transaction ends either way (Release).
type Quota interface {
	ReserveMail(user string, lim quota.Limits) error
	ReserveRecipient(user string, lim quota.Limits) error
	Release(user string, messages, recipients int)
	CheckMail(user string, lim quota.Limits) error
	Add(user string, recipients int)
}

// quotaHold is what a session's transaction holds of its credential's
// limits. Logout may run on another goroutine than the session's (a
// server shutdown), hence the lock: what is held is given back once.
type quotaHold struct {
	mu                   sync.Mutex
	user                 string
	messages, recipients int
}

func (h *quotaHold) add(user string, messages, recipients int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.user = user
	h.messages += messages
	h.recipients += recipients
}

// take empties the hold and returns what it held.
func (h *quotaHold) take() (user string, messages, recipients int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	user, messages, recipients = h.user, h.messages, h.recipients
	h.messages, h.recipients = 0, 0
	return user, messages, recipients
}

// SetSendingLimits changes the default hourly limits of every credential
// (submission.limits; a reload); users may carry their own.
func (s *Server) SetSendingLimits(l quota.Limits) {
	s.messagesPerHour.Store(int64(l.MessagesPerHour))
	s.recipientsPerHour.Store(int64(l.RecipientsPerHour))
}

// sendingLimits are u's limits: its own where it has them, else the defaults.
func (s *Server) sendingLimits(u *auth.User) quota.Limits {
	l := quota.Limits{MessagesPerHour: int(s.messagesPerHour.Load()), RecipientsPerHour: int(s.recipientsPerHour.Load())}
	if u.MessagesPerHour != nil {
		l.MessagesPerHour = *u.MessagesPerHour
	}
	if u.RecipientsPerHour != nil {
		l.RecipientsPerHour = *u.RecipientsPerHour
	}
	return l
}

// checkQuota turns a refusal of the quota into its reply: 450 4.7.1, a
// temporary failure (RFC 5321 4.2.5, RFC 3463 4.7.1 "delivery not
// authorized"), so the client keeps the mail and tries later, when the
// window has moved on or the credential is resumed.
func (s *session) checkQuota(err error) error {
	if err == nil {
		return nil
	}
	var r *quota.Refusal
	if !errors.As(err, &r) {
		s.srv.log.Error("sending limits", "user", s.user.Name, "err", err)
		return errLocal
	}
	s.srv.metrics.limited(r.Kind)
	s.srv.log.Warn("sending limit", "user", s.user.Name, "client_ip", s.ip, "reason", r.Kind, "limit", r.Limit)
	switch r.Kind {
	case quota.RefusedSuspended:
		return reply(450, "4.7.1", "Sending is suspended for this credential; ask the postmaster")
	case quota.RefusedMessages:
		return reply(450, "4.7.1", fmt.Sprintf("Message limit for this credential reached (%d per hour); try again later", r.Limit))
	default:
		return reply(450, "4.7.1", fmt.Sprintf("Recipient limit for this credential reached (%d per hour); try again later", r.Limit))
	}
}

func (s *session) quotaMail() error {
	if s.srv.quota == nil {
		return nil
	}
	if err := s.srv.quota.ReserveMail(s.user.Name, s.srv.sendingLimits(s.user)); err != nil {
		return s.checkQuota(err)
	}
	s.held.add(s.user.Name, 1, 0)
	return nil
}

func (s *session) quotaRcpt() error {
	if s.srv.quota == nil {
		return nil
	}
	if err := s.srv.quota.ReserveRecipient(s.user.Name, s.srv.sendingLimits(s.user)); err != nil {
		return s.checkQuota(err)
	}
	s.held.add(s.user.Name, 0, 1)
	return nil
}

// quotaData stops a transaction whose credential was suspended after its
// last RCPT; the limits were checked at MAIL and RCPT. (go-smtp has sent
// 354 already, so the client hears this at the end of its data.)
func (s *session) quotaData() error {
	if s.srv.quota == nil {
		return nil
	}
	return s.checkQuota(s.srv.quota.CheckMail(s.user.Name, quota.Limits{})) // no limits: the suspension only
}

// quotaCount counts a queued message, in place of what its transaction held.
func (s *session) quotaCount() {
	if s.srv.quota != nil {
		s.srv.quota.Add(s.user.Name, len(s.env.Recipients))
		s.quotaRelease()
	}
}

// quotaRelease gives back what the transaction held (it ended: queued,
// reset, refused, or its connection closed).
func (s *session) quotaRelease() {
	if s.srv.quota == nil {
		return
	}
	if user, m, r := s.held.take(); m != 0 || r != 0 {
		s.srv.quota.Release(user, m, r)
	}
}

func (in *instruments) limited(reason string) {
	in.limitedCount.Add(context.Background(), 1, in.attr("reason", reason))
}

// SendingLimits are the default hourly limits in force.
func (s *Server) SendingLimits() quota.Limits {
	return quota.Limits{MessagesPerHour: int(s.messagesPerHour.Load()), RecipientsPerHour: int(s.recipientsPerHour.Load())}
}
