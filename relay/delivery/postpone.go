package delivery

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/postern/postern/queue"
)

// postpone gives the attempt's recipients back to the queue unattempted,
// due after wait: their domain has no free connection now. Nothing is
// counted against them (no attempt, no retry backoff, no delay notice),
// since nothing was tried; the engine looks for work again when they fall
// due.
func (a *attempt) postpone(wait time.Duration) []queue.Outcome {
	at := a.now.Add(wait)
	out := make([]queue.Outcome, len(a.idxs))
	for k, i := range a.idxs {
		out[k] = queue.Outcome{Recipient: i, Result: queue.ResultPostponed, RetryAt: at}
	}
	a.e.metrics.postpone(len(out))
	a.e.d.Log.Debug("destination busy: recipients postponed", "queue_id", a.m.ID, "domain", a.domain,
		"rcpts", len(out), "until", at)
	a.e.wakeUp(at)
	return out
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
