package delivery

import (
	"time"

	"github.com/postern/postern/relay/audit"
)

// CountOperatorBounce counts n recipients failed by the operator ("postern
// queue bounce") among the final outcomes: bounced, before any policy was
// decided for them, inQueue after their arrival. Their audit records are
// journalled by the queue with the failure itself (queue.FailNowRecorded).
func (e *Engine) CountOperatorBounce(n int, inQueue time.Duration) {
	for range n {
		e.metrics.finished(audit.Bounced, "", false, inQueue.Seconds())
	}
}
