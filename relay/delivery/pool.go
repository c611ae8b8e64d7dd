package delivery

import (
	"context"
	"sync"
	"time"
)

// pool keeps sessions open after a transaction, so that the next message
// for the same next hop skips the TCP and TLS handshakes, and bounds how
// many connections one destination gets at once.
type pool struct {
	maxUses  int
	idleTime time.Duration
	perDest  int
	now      func() time.Time

	mu    sync.Mutex
	idle  map[string][]*pooled
	slots map[string]chan struct{}
}

type pooled struct {
	c     *conn
	uses  int
	since time.Time
}

func newPool(maxUses int, idleTime time.Duration, perDest int, now func() time.Time) *pool {
	return &pool{maxUses: maxUses, idleTime: idleTime, perDest: perDest, now: now,
		idle: map[string][]*pooled{}, slots: map[string]chan struct{}{}}
}

// acquire waits for one of the destination's connection slots.
func (p *pool) acquire(ctx context.Context, dest string) (release func(), err error) {
	if p.perDest <= 0 {
		return func() {}, nil
	}
	p.mu.Lock()
	slot, ok := p.slots[dest]
	if !ok {
		slot = make(chan struct{}, p.perDest)
		p.slots[dest] = slot
	}
	p.mu.Unlock()
	select {
	case slot <- struct{}{}:
		return func() { <-slot }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// take returns an idle session to key, if one is fresh enough.
func (p *pool) take(key string) *pooled {
	p.mu.Lock()
	defer p.mu.Unlock()
	for list := p.idle[key]; len(list) > 0; list = p.idle[key] {
		pc := list[len(list)-1]
		p.idle[key] = list[:len(list)-1]
		if p.now().Sub(pc.since) <= p.idleTime {
			return pc
		}
		go pc.c.close()
	}
	return nil
}

// put keeps a session for reuse after RSET, or closes it when it has served
// enough or the server does not take RSET.
func (p *pool) put(key string, pc *pooled) {
	pc.uses++
	// A cleartext fallback is not kept: the next message tries STARTTLS again.
	if pc.c.tls.Fallback != "" || pc.uses >= p.maxUses || p.idleTime <= 0 || pc.c.reset() != nil {
		pc.c.close()
		return
	}
	pc.since = p.now()
	p.mu.Lock()
	p.idle[key] = append(p.idle[key], pc)
	p.mu.Unlock()
}

// closeAll ends every idle session (at shutdown).
func (p *pool) closeAll() {
	p.mu.Lock()
	idle := p.idle
	p.idle = map[string][]*pooled{}
	p.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.c.close()
		}
	}
}

// reap closes sessions idle for longer than idleTime, so that kept
// connections do not sit open until the server drops them.
func (p *pool) reap() {
	p.mu.Lock()
	var stale []*pooled
	for key, list := range p.idle {
		fresh := list[:0]
		for _, pc := range list {
			if p.now().Sub(pc.since) > p.idleTime {
				stale = append(stale, pc)
			} else {
				fresh = append(fresh, pc)
			}
		}
		p.idle[key] = fresh
	}
	p.mu.Unlock()
	for _, pc := range stale {
		pc.c.close()
	}
}
