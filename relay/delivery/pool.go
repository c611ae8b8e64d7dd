package delivery

import (
	"sync"
	"time"
)

// pool keeps sessions open after a transaction, so that the next message
// for the same next hop skips the TCP and TLS handshakes. How many attempts
// one destination gets at once is destinations' to decide.
type pool struct {
	maxUses  int
	idleTime time.Duration
	now      func() time.Time

	mu   sync.Mutex
	idle map[string][]*pooled
}

type pooled struct {
	c     *conn
	uses  int
	since time.Time
}

func newPool(maxUses int, idleTime time.Duration, now func() time.Time) *pool {
	return &pool{maxUses: maxUses, idleTime: idleTime, now: now, idle: map[string][]*pooled{}}
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
