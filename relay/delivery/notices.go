package delivery

import (
	"errors"
	"io"
	"strings"
	"time"

	"github.com/postern/postern/internal/mailname"
	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/dsn"
)

// Delivery status notifications to senders (RFC 3464): the failure report
// (a bounce) when a message is retired, the delay warning with a deferral,
// and the "relayed" report for a hop without DSN. Each is queued in the
// same queue transaction as what it reports, so a crash can neither send a
// notice twice nor lose one.

// maybeWarnDelay adds a delay notice (RFC 3464 "delayed") to the outcomes,
// once per recipient after DelayWarning, where NOTIFY allows it. The notice
// rides on the first outcome it covers, so that the queue records it with
// the outcomes in one transaction (all outcomes of a lease apply or none
// do): a crash cannot send it twice, and DelayNotified is never recorded
// for a notice that was not queued. It reports whether it added one.
func (e *Engine) maybeWarnDelay(m queue.Message, outcomes []queue.Outcome) bool {
	if m.From == "" || e.cfg.DelayWarning <= 0 || e.d.Clock().Sub(m.Arrival) < e.cfg.DelayWarning {
		return false
	}
	var rcpts []dsn.Recipient
	var covered []int
	for k := range outcomes {
		o := &outcomes[k]
		r := m.Recipients[o.Recipient]
		// A postponed recipient (its destination busy) is as delayed as a
		// deferred one; its outcome carries why, as a deferral's does.
		waiting := o.Result == queue.ResultDeferred || o.Result == queue.ResultPostponed
		if !waiting || r.DelayNotified || !dsn.Wanted(r.Notify, dsn.Delayed) {
			continue
		}
		covered = append(covered, k)
		rcpts = append(rcpts, dsn.Recipient{Final: r.Addr, Original: r.Original, Action: dsn.Delayed,
			Status: orStatus(o.Status, "4.0.0"), RemoteMTA: o.Host, Diagnostic: o.Reply, LastAttempt: e.d.Clock(),
			WillRetryUntil: m.Arrival.Add(e.cfg.MaxQueueLifetime)})
	}
	if len(rcpts) == 0 {
		return false
	}
	draft, ok := e.notice(m, rcpts, true)
	if !ok {
		return false // not marked: the next deferral tries again
	}
	outcomes[covered[0]].Notices = append(outcomes[covered[0]].Notices, draft)
	for _, k := range covered {
		outcomes[k].DelayNotified = true
	}
	return true
}

// quiet reports whether a finished message needs no notice, so that the
// queue can retire it together with its last outcome.
func (e *Engine) quiet(m queue.Message) bool {
	return len(e.failureReport(m)) == 0
}

// failureReport lists the recipients a bounce must name.
func (e *Engine) failureReport(m queue.Message) []dsn.Recipient {
	var rcpts []dsn.Recipient
	for _, r := range m.Recipients {
		// Success reports (NOTIFY=SUCCESS) are left to the next hop when it
		// offers DSN; for a hop without DSN, reportRelayed sent Postern's
		// own "relayed" report when the hop accepted the message.
		if r.State != queue.Failed || !dsn.Wanted(r.Notify, dsn.Failed) {
			continue
		}
		rcpts = append(rcpts, dsn.Recipient{Final: r.Addr, Original: r.Original, Action: dsn.Failed,
			Status: orStatus(r.LastStatus, "5.0.0"), RemoteMTA: r.LastHost, Diagnostic: r.LastReply, LastAttempt: r.LastAttempt})
	}
	return rcpts
}

// retire removes a finished message, queueing its bounce in the same step.
func (e *Engine) retire(m queue.Message, seq uint64) {
	rcpts := e.failureReport(m)
	var notices []queue.Draft
	if len(rcpts) > 0 && m.From == "" {
		// Never bounce a bounce (RFC 3464 2, RFC 5321 6.1); but say so, so
		// that an undeliverable notice is not lost without a trace.
		for _, r := range rcpts {
			e.d.Log.Warn("notice undeliverable; discarded (it had the null sender)", "queue_id", m.ID,
				"rcpt", r.Final, "reply", r.Diagnostic)
		}
	}
	if len(rcpts) > 0 && m.From != "" {
		d, ok := e.notice(m, rcpts, false)
		if !ok {
			// Never retire without the notice: the retirement lease runs
			// out and the message is retired again later.
			return
		}
		notices = append(notices, d)
	}
	if err := e.d.Queue.Retire(m.ID, seq, notices...); err != nil {
		e.d.Log.Error("retiring message failed", "queue_id", m.ID, "err", err)
		return
	}
	if len(notices) > 0 {
		e.metrics.notice("failure")
	}
	e.d.Log.Info("message finished", "queue_id", m.ID, "notices", len(notices))
}

// notice builds a DSN to m's sender from the null sender. When m's body is
// gone the notice goes without it, saying so; when it cannot be read now
// (too many open files, say) there is no notice yet (ok is false), and the
// caller must try again later rather than go on without one.
func (e *Engine) notice(m queue.Message, rcpts []dsn.Recipient, headersOnly bool) (queue.Draft, bool) {
	var original []byte
	lost := false
	body, err := e.d.Queue.Body(m.ID)
	if err == nil {
		original, err = io.ReadAll(io.LimitReader(body, dsn.MaxReturnedBytes+1))
		body.Close()
	}
	switch {
	case errors.Is(err, queue.ErrBodyGone):
		e.d.Log.Error("message body is gone; its notice says so and returns none of it", "queue_id", m.ID, "err", err)
		original, lost = nil, true
	case err != nil:
		e.d.Log.Error("reading message for its notice failed; will try again", "queue_id", m.ID, "err", err)
		return queue.Draft{}, false
	}
	n := dsn.Notice{ReportingMTA: e.cfg.Hostname, From: "MAILER-DAEMON@" + e.cfg.Hostname, To: m.From,
		EnvelopeID: m.EnvelopeID, Arrival: m.Arrival, Date: e.d.Clock(), Recipients: rcpts, OriginalLost: lost,
		// A REQUIRETLS message's body must not travel in a report that is
		// not itself held to REQUIRETLS (RFC 8689 5).
		HeadersOnly: headersOnly || strings.EqualFold(m.Return, "HDRS") || m.RequireTLS}
	// The report's envelope needs SMTPUTF8 only for a non-ASCII sender.
	env := queue.Envelope{From: "", UTF8: !mailname.IsASCII(m.From), BodyType: "8BITMIME", Recipients: []queue.Recipient{{Addr: m.From, Notify: []string{"NEVER"}}}}
	return queue.Draft{Envelope: env, Body: dsn.Build(n, original)}, true
}

// reportRelayed sends the sender a "relayed" DSN (RFC 3461 5.2.2) for each
// recipient that asked for NOTIFY=SUCCESS and that a next hop without the
// DSN extension has just accepted: go-smtp drops the DSN parameters for
// such a hop, so no success report would ever come from beyond it.
//
// The report returns the header section only: RET governs failure reports
// (RFC 3461 4.3), and a success report has no need of the body. Like the
// delay warning, it rides in the outcomes' own transaction (Outcome.Notices):
// a crash before the outcome is recorded sends neither, and one after it
// sends both, once.
func (e *Engine) reportRelayed(m queue.Message, outcomes []queue.Outcome, now time.Time) {
	if m.From == "" {
		return // never a notice to the null reverse-path (RFC 5321 6.1)
	}
	var rcpts []dsn.Recipient
	first := -1
	for k, o := range outcomes {
		r := m.Recipients[o.Recipient]
		if o.Result != queue.ResultDelivered || !dsn.Wanted(r.Notify, dsn.Relayed) {
			continue
		}
		if first < 0 {
			first = k
		}
		rcpts = append(rcpts, dsn.RelayedTo(r.Addr, r.Original, o.Host, now))
	}
	if len(rcpts) == 0 {
		return
	}
	draft, ok := e.notice(m, rcpts, true)
	if !ok {
		return
	}
	outcomes[first].Notices = append(outcomes[first].Notices, draft)
	e.metrics.notice("relayed")
}

// orStatus is a recorded enhanced status code (RFC 3463), or fallback
// where none was recorded: a failure given by the operator (queue.FailNow),
// or one recorded before outcomes carried their status.
func orStatus(status, fallback string) string {
	if status == "" {
		return fallback
	}
	return status
}
