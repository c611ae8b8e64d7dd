package delivery

import (
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/idna"
)

// destinations decides, for each recipient domain, whether an attempt may
// start now. As Postfix's queue manager does, it gives each destination a
// concurrency window that starts at Config.InitialConnectionsPerDomain,
// grows by one with each transaction that completes (up to
// Config.MaxConnectionsPerDomain) and shrinks by one with each attempt that
// could not get a session at all (down to one); and it marks a destination
// dead after Config.DeadDestinationFailures such attempts in a row, for
// Config.DeadDestinationCooldown, after which one probe attempt is let
// through.
//
// A worker is never made to wait for a destination: an attempt that finds
// the window full is postponed (see attempt.postpone), and one for a dead
// destination is deferred without connecting. That keeps workers for the
// destinations that take mail, whatever one slow or dead domain does.
type destinations struct {
	initial, max int
	deadAfter    int // 0: never mark a destination dead
	cooldown     time.Duration
	now          func() time.Time
	jitter       func(time.Duration) time.Duration
	log          *slog.Logger
	metrics      *instruments

	mu sync.Mutex
	m  map[string]*destination
}

// destination is what is known of one recipient domain.
type destination struct {
	limit    int         // attempts allowed at once (the window)
	starts   []time.Time // when each attempt in flight began
	hold     time.Duration
	next     time.Time // the latest time handed to a postponed attempt
	failures int       // attempts in a row that got no session
	dead     time.Time // non-zero: marked dead; no attempt before this
	probing  bool      // the one attempt let through after the cooldown is running
	used     time.Time // last admission or completion, for reap
}

// feedback is what one attempt learnt of its destination. The values are
// ordered: an attempt that heard several things (one MX refused the
// connection, the next took the message) counts as the best of them.
type feedback uint8

const (
	noSignal   feedback = iota // nothing about the destination (a policy refusal, a DNS failure, a shutdown)
	connFailed                 // no server answered: refused, timed out, or dropped the connection
	slowDown                   // a server answered 421 (RFC 5321 3.8): it is closing the channel, overloaded
	answered                   // a server answered, if only to refuse: the destination is alive
	succeeded                  // a transaction completed
)

// Postponements of an attempt at a busy destination: never shorter than
// postponeMin (a destination whose slots free up at once is busy for no
// longer), never longer than postponeMax (a destination that recovers
// must not leave its mail waiting for a far-off turn). Between the two,
// each postponed attempt is given the next turn after the previous one's,
// a turn being how long an attempt holds a slot divided by the window: the
// longer the destination stays busy and the more mail waits for it, the
// later each comes back, so a backlog for a slow domain is taken from the
// queue about as fast as the domain takes it, not in a loop.
const (
	postponeMin = 250 * time.Millisecond
	postponeMax = 5 * time.Minute
)

// idleForget is how long an idle destination (no attempt in flight, no
// cooldown running) is kept before it is dropped: its window starts again
// at the initial size, its failures at zero.
const idleForget = 10 * time.Minute

func newDestinations(cfg Config, now func() time.Time, jitter func(time.Duration) time.Duration, log *slog.Logger, metrics *instruments) *destinations {
	ds := &destinations{initial: cfg.InitialConnectionsPerDomain, max: cfg.MaxConnectionsPerDomain,
		deadAfter: cfg.DeadDestinationFailures, cooldown: cfg.DeadDestinationCooldown,
		now: now, jitter: jitter, log: log, metrics: metrics, m: map[string]*destination{}}
	if ds.max <= 0 {
		ds.max = int(^uint(0) >> 1) // no limit
	}
	if ds.initial <= 0 || ds.initial > ds.max {
		ds.initial = ds.max
	}
	if ds.deadAfter > 0 && ds.cooldown <= 0 {
		ds.cooldown = 5 * time.Minute
	}
	return ds
}

// admission is the answer to an attempt that asks to start.
type admission struct {
	slot *slot // non-nil: go ahead, and call slot.done when finished
	// wait, when slot is nil and dead is zero: the destination is busy;
	// come back after wait.
	wait time.Duration
	// dead, when set: the destination is marked dead until then, after
	// failures attempts in a row that got no session.
	dead     time.Time
	failures int
}

// slot is one attempt's place in its destination's window.
type slot struct {
	ds     *destinations
	domain string
	d      *destination
	start  time.Time
	probe  bool
	once   sync.Once
}

// admit asks to start an attempt at domain now.
func (ds *destinations) admit(domain string) admission {
	domain = destinationKey(domain)
	now := ds.now()
	ds.mu.Lock()
	defer ds.mu.Unlock()
	d := ds.m[domain]
	if d == nil {
		d = &destination{limit: ds.initial}
		ds.m[domain] = d
	}
	d.used = now
	if !d.dead.IsZero() {
		switch {
		case now.Before(d.dead):
			return admission{dead: d.dead, failures: d.failures}
		case d.probing:
			// One probe at a time: the rest wait for what it finds.
			return admission{wait: ds.postpone(d, now)}
		}
		d.probing = true
		ds.log.Info("dead destination's cooldown is over: letting one probe attempt through", "domain", domain, "failures", d.failures)
		return admission{slot: ds.enter(domain, d, now, true)}
	}
	if len(d.starts) >= d.limit {
		return admission{wait: ds.postpone(d, now)}
	}
	return admission{slot: ds.enter(domain, d, now, false)}
}

func (ds *destinations) enter(domain string, d *destination, now time.Time, probe bool) *slot {
	d.starts = append(d.starts, now)
	return &slot{ds: ds, domain: domain, d: d, start: now, probe: probe}
}

// postpone hands a busy destination's attempt its turn: the one after the
// last turn handed out, a turn being the time an attempt holds a slot
// (the average of those finished, or the age of the oldest in flight if
// longer) divided by the window.
func (ds *destinations) postpone(d *destination, now time.Time) time.Duration {
	held := d.hold
	if held == 0 {
		// Nothing has finished yet: assume an attempt holds its slot for
		// at least the shortest postponement, so that a backlog that
		// arrives at once is spread out rather than sent back together.
		held = postponeMin
	}
	for _, s := range d.starts {
		held = max(held, now.Sub(s))
	}
	turn := held / time.Duration(max(d.limit, 1))
	wait := max(d.next.Sub(now), 0) + turn
	wait = min(max(wait, postponeMin), postponeMax)
	d.next = now.Add(wait)
	return ds.jitter(wait)
}

// done gives the slot back with what the attempt learnt of the
// destination. It may be called more than once; only the first counts.
func (s *slot) done(fb feedback) {
	s.once.Do(func() { s.ds.done(s, fb) })
}

func (ds *destinations) done(s *slot, fb feedback) {
	now := ds.now()
	ds.mu.Lock()
	defer ds.mu.Unlock()
	d := s.d
	for i, t := range d.starts {
		if t.Equal(s.start) {
			d.starts = append(d.starts[:i], d.starts[i+1:]...)
			break
		}
	}
	d.used = now
	if s.probe {
		d.probing = false
	}
	if fb == noSignal {
		return
	}
	// How long an attempt holds a slot, smoothed (weight 1/4 for the
	// newest), for the turns of postponed attempts.
	if held := now.Sub(s.start); d.hold == 0 {
		d.hold = held
	} else {
		d.hold += (held - d.hold) / 4
	}
	switch fb {
	case succeeded:
		if d.limit < ds.max { // ds.max may be the largest int (no limit)
			d.limit++
		}
		ds.alive(s.domain, d)
	case answered:
		ds.alive(s.domain, d)
	case slowDown:
		d.limit = max(d.limit-1, 1)
		ds.alive(s.domain, d)
	case connFailed:
		d.limit = max(d.limit-1, 1)
		d.failures++
		if ds.deadAfter > 0 && d.failures >= ds.deadAfter {
			was := d.dead
			d.dead = now.Add(ds.cooldown)
			if was.IsZero() || s.probe {
				ds.log.Warn("destination marked dead: deferring its mail without connecting until the cooldown is over",
					"domain", s.domain, "failures", d.failures, "until", d.dead, "probe", s.probe)
				ds.metrics.destination("dead")
			}
		}
	}
}

// alive clears the failures of a destination that answered, and revives
// it if it was marked dead.
func (ds *destinations) alive(domain string, d *destination) {
	if !d.dead.IsZero() {
		ds.log.Info("dead destination answered again: delivering to it", "domain", domain, "failures", d.failures)
		ds.metrics.destination("revived")
	}
	d.failures, d.dead = 0, time.Time{}
}

// reap forgets destinations that have been idle a while with no attempt
// in flight and no cooldown running, so that the map does not grow with
// every domain ever mailed. Failures short of a dead mark, and a dead mark
// whose cooldown is over, are forgotten too: kept, they held one entry for
// ever for every domain that once failed (the domains of a spam run's
// bounces), and a domain not asked for in idleForget is best judged afresh.
func (ds *destinations) reap() {
	now := ds.now()
	ds.mu.Lock()
	defer ds.mu.Unlock()
	for domain, d := range ds.m {
		if len(d.starts) == 0 && !d.probing && !now.Before(d.dead) && now.Sub(d.used) > idleForget {
			delete(ds.m, domain)
		}
	}
}

// feedbackOf reads what a try at one server says about the destination.
// Only the kind of failure decides, never its text: no reply at all (a
// refused or timed-out connection, 4.4.1; a connection dropped or timed
// out at the greeting, in EHLO or in a transaction, 4.4.2 with no reply
// code) is a failed connection; a 421 asks us to slow down; any other
// reply, a refusal included, shows the destination alive. A failed TLS
// handshake (4.7.5) is neither: the failure carries no typed sign of
// whether the handshake timed out or the certificate was refused.
func feedbackOf(f *Failure) feedback {
	switch {
	case f == nil:
		return succeeded
	case f.Code == 421:
		return slowDown
	case f.Code != 0:
		return answered
	case f.Enhanced == "4.4.1" || f.Enhanced == "4.4.2":
		return connFailed
	}
	return noSignal
}

// destinationKey is the name one destination's window is kept under,
// whatever the spelling a recipient address used: an IDN's U-labels and
// A-labels are the same name (RFC 5890 2.3.2.1), and so are its case and
// Unicode normalization forms (UTS 46 mapping). Without it, each spelling
// had a window of its own. A name IDNA refuses (an address literal, say)
// is only lower-cased.
func destinationKey(domain string) string {
	if a, err := idna.Lookup.ToASCII(domain); err == nil && a != "" {
		return a
	}
	return strings.ToLower(domain)
}
