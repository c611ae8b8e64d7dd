package delivery

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/postern/postern/queue"
)

// postpone gives the attempt's recipients back to the queue unattempted,
// due after wait: their domain has no free connection now. Nothing is
// counted against them (no attempt, no retry backoff), since nothing was
// tried; the engine looks for work again when they fall due.
//
// A busy destination must not hold mail past what the sender was promised,
// however long it stays busy: a recipient postponed past the delay warning
// gets its delay notice (maybeWarnDelay reads the postponement's reply), and
// one postponed past the queue lifetime expires as a deferred one would
// (RFC 5321 4.5.4.1), with its last attempt's reply if it had one.
func (a *attempt) postpone(wait time.Duration) []queue.Outcome {
	at := a.now.Add(wait)
	// X.4.5 (RFC 3463): "the mail system was unable to deliver the message
	// because the mail system was congested": our own window is full.
	busy := &Failure{Temporary: true, Enhanced: "4.4.5",
		Text: a.domain + " is busy: every connection allowed to it is in use; not tried this time"}
	expired := a.e.cfg.MaxQueueLifetime > 0 && a.now.Sub(a.m.Arrival) >= a.e.cfg.MaxQueueLifetime
	out := make([]queue.Outcome, len(a.idxs))
	postponed := 0
	for k, i := range a.idxs {
		if expired {
			out[k] = a.record(i, lastFailure(a.m.Recipients[i], busy), a.m.Recipients[i].LastHost, netip.AddrPort{}, TLSInfo{}, "")
			continue
		}
		postponed++
		out[k] = queue.Outcome{Recipient: i, Result: queue.ResultPostponed, RetryAt: at,
			Reply: busy.Error(), Status: busy.Enhanced}
	}
	if expired {
		a.e.d.Log.Info("destination busy past the queue lifetime: recipients expired", "queue_id", a.m.ID,
			"domain", a.domain, "rcpts", len(out))
		return out
	}
	a.e.metrics.postpone(postponed)
	a.e.d.Log.Debug("destination busy: recipients postponed", "queue_id", a.m.ID, "domain", a.domain,
		"rcpts", len(out), "until", at)
	a.e.wakeUp(at)
	return out
}

// lastFailure is what an expiry while busy reports: the busy destination,
// and the reply of the recipient's last attempt if it had one.
func lastFailure(r queue.Recipient, busy *Failure) *Failure {
	if r.LastReply == "" {
		return busy
	}
	f := *busy
	f.Text += "; the last attempt was answered: " + r.LastReply
	return &f
}

// unreachable defers the attempt's recipients without connecting: their
// domain is marked dead until the given time. It is an ordinary deferral
// (4.4.1, RFC 3463: no answer from host), so the retry backoff, the delay
// notice and the queue lifetime apply as after a failed connection.
func (a *attempt) unreachable(until time.Time, failures int) []queue.Outcome {
	f := &Failure{Temporary: true, Enhanced: "4.4.1",
		Text: fmt.Sprintf("%s is marked unreachable until %s, after %d failed connections; not connecting meanwhile",
			a.domain, until.UTC().Format(time.RFC3339), failures)}
	a.log("", netip.AddrPort{}, TLSInfo{}, f.Error(), "unreachable")
	return a.fail(f)
}
