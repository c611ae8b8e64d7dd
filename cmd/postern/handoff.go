package main

import (
	"io"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/delivery"
)

// handoffQueue is the queue as submission sees it: a message accepted
// while a delivery worker is free is queued with its lease and handed to
// that worker at once (queue.EnqueueLeased, delivery.Engine.Reserve), which
// saves the lease transaction and the scheduler's next look; otherwise it
// is queued unleased and the scheduler is woken to find it. Neither the
// queue nor submission knows of the other: the wiring is here.
type handoffQueue struct {
	*queue.Queue
	engine *delivery.Engine
	hold   time.Duration // delivery.lease_time, as the scheduler leases
}

func (h handoffQueue) Enqueue(id string, env queue.Envelope, body io.Reader) (string, error) {
	return h.EnqueueSealed(id, env, body, nil)
}

func (h handoffQueue) EnqueueSealed(id string, env queue.Envelope, body io.Reader, seal func() ([]byte, error)) (string, error) {
	var slot *delivery.Slot
	// The worker is reserved only once the body is stored, just before
	// the commit: none waits on a client still sending.
	take := func() bool {
		var ok bool
		slot, ok = h.engine.Reserve()
		return ok
	}
	id, lease, err := h.Queue.EnqueueLeased(id, env, body, seal, h.hold, take)
	switch {
	case lease != nil && err == nil:
		slot.Deliver(*lease)
		return id, nil
	case slot != nil:
		slot.Cancel() // reserved, but the commit failed
	}
	if err == nil {
		h.engine.Kick()
	}
	return id, err
}
