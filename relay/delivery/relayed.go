package delivery

import (
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/dsn"
)

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
