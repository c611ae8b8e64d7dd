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
	// quitWait bounds how long closing a kept session waits for the
	// server's reply to QUIT.
	quitWait time.Duration
	closing  sync.WaitGroup // sessions being closed (see retire)

	mu   sync.Mutex
	idle map[string][]*pooled
}

type pooled struct {
	c     *conn
	uses  int
	since time.Time
}

func newPool(maxUses int, idleTime time.Duration, now func() time.Time) *pool {
	return &pool{maxUses: maxUses, idleTime: idleTime, now: now, quitWait: quitWait, idle: map[string][]*pooled{}}
}

// quitWait: a kept session is idle, so a server that does not answer its
// QUIT at once is gone or stalling (a NAT that forgot the connection, a
// tarpit); the QUIT is a courtesy (RFC 5321 4.1.1.10), not worth the
// command timeout.
const quitWait = 5 * time.Second

// retire closes a kept session in the background: QUIT, then the
// connection, waiting at most quitWait for the server's reply. Whoever lets
// go of a session (the scheduler's reaper among them) never waits for it.
func (p *pool) retire(pc *pooled) {
	p.closing.Add(1)
	go func() {
		defer p.closing.Done()
		stop := time.AfterFunc(p.quitWait, func() { pc.c.netConn.Close() })
		defer stop.Stop()
		pc.c.close()
	}()
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
		p.retire(pc)
	}
	return nil
}

// put keeps a session for reuse after RSET, or closes it when it has served
// enough or the server does not take RSET.
func (p *pool) put(key string, pc *pooled) {
	pc.uses++
	// A cleartext fallback is not kept: the next message tries STARTTLS again.
	if pc.c.tls.Fallback != "" || pc.uses >= p.maxUses || p.idleTime <= 0 || pc.c.reset() != nil {
		p.retire(pc) // the worker, and its domain's slot, need not wait for the QUIT
		return
	}
	pc.since = p.now()
	p.mu.Lock()
	p.idle[key] = append(p.idle[key], pc)
	p.mu.Unlock()
}

// closeAll ends every idle session (at shutdown), all at once, and waits
// for them (at most quitWait) and for those already being closed.
func (p *pool) closeAll() {
	p.mu.Lock()
	idle := p.idle
	p.idle = map[string][]*pooled{}
	p.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			p.retire(pc)
		}
	}
	p.closing.Wait()
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
		p.retire(pc) // the scheduler's loop calls reap: it must not wait
	}
}
