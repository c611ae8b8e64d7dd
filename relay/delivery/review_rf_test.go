package delivery

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
	"github.com/postern/postern/tlspolicy"
)

// fillWindow takes every slot of domain's window, as a tarpit that never
// lets go would, and returns a function that gives them back.
func fillWindow(t *testing.T, e *Engine, domain string) func() {
	t.Helper()
	var held []*slot
	for {
		adm := e.dests.admit(domain)
		if adm.slot == nil {
			break
		}
		held = append(held, adm.slot)
	}
	if len(held) == 0 {
		t.Fatalf("no slot of %s was free", domain)
	}
	return func() {
		for _, s := range held {
			s.done(noSignal)
		}
	}
}

// A recipient whose destination stays busy past the queue lifetime is
// bounced (4.4.7) at the first postponement after it: postponement is not
// an attempt, but it must not hold a message past max_queue_lifetime, the
// promise made to the sender (RFC 5321 4.5.4.1: the sender gives up).
func TestPostponedPastLifetimeBounces(t *testing.T) {
	mx := smtptest.Start(t, nil)
	w := newWorld(t, mx)
	release := fillWindow(t, w.engine, "dest.test")
	defer release()
	id := w.submit(sender, "a@dest.test")
	w.run()
	if m := w.state(id); m.Recipients[0].Attempts != 0 || m.Recipients[0].State.Final() {
		t.Fatalf("a busy destination's recipient: %+v", m.Recipients[0])
	}
	w.clock.Advance(25 * time.Hour) // past the 24h lifetime, still busy
	w.run()
	if _, err := w.q.Get(id); err == nil {
		t.Fatalf("a message postponed past its lifetime is kept: %+v", w.state(id).Recipients[0])
	}
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Status: 4.4.7") || !strings.Contains(b[0], "Action: failed") ||
		!strings.Contains(b[0], "dest.test is busy") {
		t.Fatalf("expiry bounce: %q", b)
	}
}

// A recipient postponed past the delay warning gets its delay notice once,
// as a deferred one does: the sender is owed it whatever held the mail.
func TestPostponedPastDelayWarningWarnsOnce(t *testing.T) {
	mx := smtptest.Start(t, nil)
	w := newWorld(t, mx)
	release := fillWindow(t, w.engine, "dest.test")
	defer release()
	id := w.submit(sender, "a@dest.test")
	w.run()
	w.clock.Advance(5 * time.Hour) // past the 4h warning
	w.run()
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Action: delayed") || !strings.Contains(b[0], "Status: 4.4.5") ||
		!strings.Contains(b[0], "dest.test is busy") {
		t.Fatalf("delay warning for a postponed recipient: %q", b)
	}
	w.clock.Advance(time.Hour)
	w.run()
	if len(w.bounces()) != 1 {
		t.Fatal("delay warning repeated")
	}
	if r := w.state(id).Recipients[0]; r.Attempts != 0 || !r.DelayNotified {
		t.Fatalf("postponed recipient after its warning: %+v", r)
	}
}

// Every domain ever mailed is forgotten once idle, whatever it last heard:
// a domain with one failed connection, or one marked dead whose cooldown
// is long over, must not stay in the map for ever (one entry per domain of
// every bounced spam run otherwise).
func TestReapForgetsFailedAndDeadDomains(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	ds := testDestinations(c, 2, 2, 2, func(d time.Duration) time.Duration { return d })
	for i := range 1000 {
		domain := fmt.Sprintf("d%d.test", i)
		ds.admit(domain).slot.done(connFailed)
		if i%2 == 0 {
			ds.admit(domain).slot.done(connFailed) // marked dead
		}
	}
	ds.admit("busy.test") // an attempt in flight is never forgotten
	c.Advance(idleForget + time.Minute + time.Second)
	ds.reap()
	if len(ds.m) != 1 || ds.m["busy.test"] == nil {
		t.Fatalf("%d destinations kept after they were idle past %v (want busy.test alone)", len(ds.m), idleForget)
	}
}

// A dead domain is remembered while its cooldown runs, even if idle: it is
// not given a full window again before its probe.
func TestReapKeepsADeadDomainInItsCooldown(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	ds := testDestinations(c, 2, 2, 1, func(d time.Duration) time.Duration { return d })
	ds.cooldown = time.Hour
	ds.admit("gone.test").slot.done(connFailed)
	c.Advance(idleForget + time.Second)
	ds.reap()
	if adm := ds.admit("gone.test"); adm.dead.IsZero() {
		t.Fatalf("a dead domain was forgotten in its cooldown: %+v", adm)
	}
}

// A handed-over message for a busy domain is postponed by the worker it
// was handed to: its lease is settled (the recipient pending, due at its
// turn, no attempt counted), the worker is freed, and once the domain has
// room the scheduler delivers it.
func TestHandedOverMessageForABusyDomainIsPostponed(t *testing.T) {
	mx := smtptest.Start(t, nil)
	w := newWorld(t, mx)
	release := fillWindow(t, w.engine, "dest.test")
	w.runEngineForHandOvers()
	id, slot, l := w.submitLeased("a@dest.test")
	if slot == nil || l == nil {
		t.Fatal("no worker was reserved with two free")
	}
	slot.Deliver(*l)
	if !eventually(func() bool {
		r := w.state(id).Recipients[0]
		return r.State == queue.Pending && r.Lease == 0 && r.Due.After(w.clock.Now())
	}) {
		t.Fatalf("the handed-over message was not postponed: %+v", w.state(id).Recipients[0])
	}
	if r := w.state(id).Recipients[0]; r.Attempts != 0 || r.LastReply != "" {
		t.Fatalf("a postponement counted as an attempt: %+v", r)
	}
	if !eventually(func() bool {
		s, ok := w.engine.Reserve()
		ok = ok && s != nil
		if ok {
			s.Cancel()
		}
		return ok
	}) {
		t.Fatal("the worker was not freed")
	}
	release()
	w.clock.Advance(postponeMax + time.Second)
	w.engine.Kick()
	if !eventually(func() bool { _, err := w.q.Get(id); return errors.Is(err, queue.ErrNotFound) }) {
		t.Fatalf("the postponed message was not delivered once the domain had room: %+v", w.state(id).Recipients[0])
	}
}

// Many workers admitting and finishing at one domain at once, with every
// kind of feedback and the reaper running beside them: the window stays
// between one and the maximum, never more attempts are let in than it
// allows, and every slot comes back.
func TestWindowUnderConcurrentAttempts(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	ds := testDestinations(c, 3, 6, 4, func(d time.Duration) time.Duration { return d })
	fbs := []feedback{noSignal, connFailed, slowDown, answered, succeeded, succeeded}
	var wg sync.WaitGroup
	var inFlight, most atomic.Int64
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 400 {
				adm := ds.admit("many.test")
				if adm.slot == nil {
					if g == 0 && i%50 == 0 {
						c.Advance(time.Minute) // cooldowns end, the reaper looks
						ds.reap()
					}
					continue
				}
				n := inFlight.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				inFlight.Add(-1)
				adm.slot.done(fbs[(g+i)%len(fbs)])
				adm.slot.done(connFailed) // a second done counts for nothing
			}
		}()
	}
	wg.Wait()
	if most.Load() > 6 {
		t.Fatalf("%d attempts at once with a maximum of 6", most.Load())
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if d := ds.m["many.test"]; d != nil && (len(d.starts) != 0 || d.limit < 1 || d.limit > 6 || d.probing) {
		t.Fatalf("after every attempt finished: %+v", d)
	}
}

// A recipient that was tried and deferred, then found its domain busy
// until its lifetime ran out, is bounced with the reply of its last
// attempt beside the busy domain: the sender learns what the server said.
func TestPostponedPastLifetimeKeepsTheLastReply(t *testing.T) {
	mx := deferringMX(t)
	w := newWorld(t, mx)
	id := w.submit(sender, "a@dest.test")
	w.run()
	if r := w.state(id).Recipients[0]; r.Attempts != 1 {
		t.Fatalf("not deferred: %+v", r)
	}
	release := fillWindow(t, w.engine, "dest.test")
	defer release()
	w.clock.Advance(25 * time.Hour)
	w.run()
	b := w.bounces()
	if len(b) != 1 || !strings.Contains(b[0], "Status: 4.4.7") || !strings.Contains(b[0], "still not") {
		t.Fatalf("expiry bounce: %q", b)
	}
}

// A domain's window is one whatever the spelling of its name: an IDN in
// U-labels and in A-labels (RFC 5890 2.3.2.1: the same name), or in
// another case, is one destination. Before, each spelling had a window of
// its own, so a sender could multiply max_connections_per_domain at one
// destination by writing its name several ways.
func TestWindowIsOnePerDomainWhateverItsSpelling(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	ds := testDestinations(c, 1, 1, 0, func(d time.Duration) time.Duration { return d })
	first := ds.admit("xn--bcher-kva.test")
	if first.slot == nil {
		t.Fatal("no slot for the first attempt")
	}
	for _, spelling := range []string{"bücher.test", "BÜCHER.test", "bu\u0308cher.test", "XN--BCHER-KVA.TEST"} {
		if adm := ds.admit(spelling); adm.slot != nil {
			t.Errorf("%q was given a second slot of a window of one", spelling)
			adm.slot.done(noSignal)
		}
	}
	first.slot.done(noSignal)
	if adm := ds.admit("bücher.test"); adm.slot == nil {
		t.Fatal("the slot given back is not the same window's")
	}
}

// brokenBodies is a queue whose message bodies fail to read half-way, as
// a spool file on a failing disk does.
type brokenBodies struct{ *queue.Queue }

func (b brokenBodies) Body(id string) (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(strings.NewReader("Subject: half\r\n"), iotest.ErrReader(errors.New("input/output error")))), nil
}

// A message whose body cannot be read is our failure, not the
// destination's: it neither shrinks the domain's window nor counts towards
// marking it dead. Before, the read error mid-DATA came back as a session
// failure without a reply (4.4.2), read as a failed connection: one bad
// spool file retried a few times marked a healthy domain dead, deferring
// all its mail.
func TestUnreadableBodyIsNotTheDestinationsFailure(t *testing.T) {
	mx := smtptest.Start(t, nil)
	w := newWorld(t, mx)
	w.window(2, 2, 1, time.Hour) // one failed connection marks a domain dead
	w.engine.d.Queue = brokenBodies{w.q}
	id := w.submit(sender, "a@dest.test")
	w.run()
	adm := w.engine.dests.admit("dest.test")
	if adm.slot == nil {
		t.Fatalf("an unreadable body marked dest.test dead or closed its window: %+v", adm)
	}
	adm.slot.done(noSignal)
	if r := w.state(id).Recipients[0]; r.State != queue.Pending || r.Attempts != 1 || !strings.HasPrefix(r.LastReply, "4.3.0") {
		t.Fatalf("after an unreadable body: %+v", r)
	}
}

// An attempt cut off at shutdown gives its slot back and teaches the
// window nothing: after a stop while a tarpit holds back its greeting, the
// engine stops (the drain deadline cuts the attempt off), the domain's one
// slot is free, not marked failed, and its recipient is queued untried.
// Before, nothing cut off a session before its transaction: the greeting,
// EHLO and STARTTLS ran to their own timeouts (5 minutes each by default),
// holding the slot, the worker and the shutdown past the drain deadline,
// and a lease lost meanwhile was not noticed until the transaction.
func TestCutOffAttemptGivesItsSlotBack(t *testing.T) {
	mx := smtptest.Start(t, nil)
	tarpit := startFakeHost(t, silent)
	w := newWorld(t, mx, Route{Match: "busy.test", Host: "127.0.0.1", Port: tarpit.Port})
	w.window(1, 1, 1, time.Hour) // one failed connection would mark it dead
	w.engine.cfg.Timeouts.Greeting = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { w.engine.Run(ctx); close(stopped) }()
	id := w.submit(sender, "a@busy.test")
	w.engine.Kick()
	if !eventually(func() bool { return tarpit.accepted.Load() == 1 }) {
		cancel()
		<-stopped
		t.Fatal("the attempt never reached the tarpit")
	}
	cancel() // DrainTimeout 0: the attempt is cut off at once
	if !eventually(func() bool {
		select {
		case <-stopped:
			return true
		default:
			return false
		}
	}) {
		tarpit.Close() // lets the attempt end, so that the test can
		<-stopped
		t.Fatal("the engine did not stop: the attempt in the tarpit's greeting was not cut off")
	}
	tarpit.Close()
	adm := w.engine.dests.admit("busy.test")
	if adm.slot == nil {
		t.Fatalf("after a cut-off attempt the window is not free: %+v", adm)
	}
	adm.slot.done(noSignal)
	if r := w.state(id).Recipients[0]; r.State != queue.Pending || r.Attempts != 0 {
		t.Fatalf("the cut-off recipient: %+v", r)
	}
}

// mute greets and answers EHLO, then says nothing more (a kept session
// whose server went quiet: a NAT that forgot the connection, a tarpit).
func mute(c net.Conn) {
	c.Write([]byte("220 mute.test ESMTP\r\n"))
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(strings.ToUpper(line), "EHLO") {
			c.Write([]byte("250 mute.test\r\n"))
		}
	}
}

// keptSession opens a session to the mute host and keeps it in p, idle
// since now.
func keptSession(t *testing.T, p *pool, host *fakeHost, now time.Time) {
	t.Helper()
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(host.Port))
	to := Timeouts{Connect: time.Hour, Greeting: time.Hour, Command: time.Hour, Block: time.Hour, FinalDot: time.Hour}
	c, err := dialSession(context.Background(), &net.Dialer{}, "relay.test", "mute.test", addr, to, tlspolicy.Decision{Level: tlspolicy.None})
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.idle["mute"] = append(p.idle["mute"], &pooled{c: c, since: now})
	p.mu.Unlock()
}

// returns reports whether f returns before eventually gives up.
func returns(f func()) bool {
	done := make(chan struct{})
	go func() { f(); close(done) }()
	return eventually(func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
}

// Closing kept sessions never waits long for a server that does not
// answer QUIT: the reaper, which runs in the scheduler's loop, does not
// wait at all, and the shutdown waits a short while. Before, each QUIT
// waited for its reply as long as any command (5 minutes by default), one
// after the other: a single quiet next hop stopped the scheduler (no
// lease, so no delivery to any domain) for 5 minutes per kept session,
// and held the shutdown as long.
func TestClosingKeptSessionsDoesNotWaitForAQuietServer(t *testing.T) {
	host := startFakeHost(t, mute)
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	p := newPool(10, time.Minute, c.Now)
	p.quitWait = 10 * time.Millisecond
	for range 3 {
		keptSession(t, p, host, c.Now())
	}
	c.Advance(2 * time.Minute) // stale: the reaper closes them
	if !returns(p.reap) {
		host.Close() // ends the QUITs, so that the test can end
		t.Fatal("reaping kept sessions waited for a server that does not answer QUIT")
	}
	for range 3 {
		keptSession(t, p, host, c.Now())
	}
	if !returns(p.closeAll) {
		host.Close()
		t.Fatal("closing kept sessions at shutdown waited for a server that does not answer QUIT")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle["mute"]) != 0 {
		t.Fatalf("sessions kept after closeAll: %d", len(p.idle["mute"]))
	}
}
