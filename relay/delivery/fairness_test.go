package delivery

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/queue"
	"github.com/postern/postern/relay/smtptest"
)

// fakeHost is a TCP server on 127.0.0.1 whose every connection is handled
// by its current behaviour: answer nothing (a tarpit that never greets),
// hang up at once (a server that drops every connection), or pass the
// connection through to a real MX. It counts the connections it accepts.
type fakeHost struct {
	Port     int
	accepted atomic.Int32
	l        net.Listener

	mu     sync.Mutex
	handle func(net.Conn)
	conns  []net.Conn
	wg     sync.WaitGroup
	closed bool
}

func startFakeHost(t *testing.T, handle func(net.Conn)) *fakeHost {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeHost{Port: l.Addr().(*net.TCPAddr).Port, l: l, handle: handle}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.accepted.Add(1)
			f.mu.Lock()
			if f.closed {
				f.mu.Unlock()
				c.Close()
				return
			}
			f.conns = append(f.conns, c)
			handle := f.handle
			f.wg.Add(1)
			f.mu.Unlock()
			go func() { defer f.wg.Done(); handle(c) }()
		}
	}()
	t.Cleanup(f.Close)
	return f
}

// behave changes how connections accepted from now on are handled.
func (f *fakeHost) behave(handle func(net.Conn)) {
	f.mu.Lock()
	f.handle = handle
	f.mu.Unlock()
}

// Close stops the server and ends every connection it holds.
func (f *fakeHost) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	f.l.Close()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// silent holds the connection without a word until it is closed.
func silent(c net.Conn) { io.Copy(io.Discard, c) }

// hangUp closes the connection before the greeting.
func hangUp(c net.Conn) { c.Close() }

// passTo relays the connection to the MX.
func passTo(mx *smtptest.MX) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		up, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(mx.Port)))
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() { io.Copy(up, c); up.Close(); close(done) }()
		io.Copy(c, up)
		c.Close()
		<-done
	}
}

// window sets the engine's per-destination limits (and dead-destination
// detection) as a configuration would.
func (w *world) window(initial, max, deadAfter int, cooldown time.Duration) {
	w.engine.cfg.InitialConnectionsPerDomain, w.engine.cfg.MaxConnectionsPerDomain = initial, max
	w.engine.cfg.DeadDestinationFailures, w.engine.cfg.DeadDestinationCooldown = deadAfter, cooldown
	e := w.engine
	e.dests = newDestinations(e.cfg, e.d.Clock, e.d.Jitter, e.d.Log, &e.metrics)
}

// runEngine runs the engine's workers until the returned stop is called;
// stop first ends the fake host's connections, so that the attempts they
// hold end at once rather than at the engine's drain deadline.
func (w *world) runEngine(f *fakeHost) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.engine.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); f.Close(); <-done }) }
	w.t.Cleanup(stop)
	return stop
}

// postponed reports whether the message's first recipient went back to
// the queue unattempted, due later.
func (w *world) postponed(id string) bool {
	m, err := w.q.Get(id)
	return err == nil && m.Recipients[0].State == queue.Pending && m.Recipients[0].Due.After(w.clock.Now())
}

// With one connection allowed to busy.test and two workers: while the
// first message sits in a server that never answers, a second message for
// busy.test goes back to the queue (no attempt counted, no reply recorded)
// instead of holding the second worker,
// and a message for another domain is delivered meanwhile. Before, the
// second worker waited for busy.test's connection slot, and nothing else
// was delivered.
func TestBusyDestinationDoesNotHoldAWorker(t *testing.T) {
	mx := smtptest.Start(t, nil)
	tarpit := startFakeHost(t, silent)
	w := newWorld(t, mx, Route{Match: "busy.test", Host: "127.0.0.1", Port: tarpit.Port})
	w.window(1, 1, 0, 0)
	w.engine.cfg.Workers = 2
	stop := w.runEngine(tarpit)
	defer stop()

	first := w.submit(sender, "a@busy.test")
	w.engine.Kick()
	if !eventually(func() bool { return tarpit.accepted.Load() == 1 }) {
		t.Fatal("the first message never reached busy.test's server")
	}
	// Not old enough for a delay notice, which a postponement past the
	// warning does send (TestPostponedPastDelayWarningWarnsOnce).
	env := queue.Envelope{From: sender, Arrival: w.clock.Now().Add(-time.Hour), Recipients: []queue.Recipient{{Addr: "b@busy.test"}}}
	second, err := w.q.Enqueue("", env, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	w.engine.Kick()
	if !eventually(func() bool { return w.postponed(second) }) {
		t.Fatalf("the second message for the busy destination was not given back to the queue: %+v", w.state(second).Recipients[0])
	}
	w.submit(sender, "c@dest.test")
	w.engine.Kick()
	if !eventually(func() bool { return len(mx.Received()) == 1 }) {
		t.Fatal("a message for another domain was not delivered while busy.test held its one connection")
	}
	r := w.state(second).Recipients[0]
	if r.Attempts != 0 || r.LastReply != "" || r.DelayNotified {
		t.Fatalf("the postponement counted as an attempt: %+v", r)
	}
	queued, err := w.q.List(queue.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range queued {
		if m.From == "" {
			t.Fatalf("a notice was queued for a postponement: %+v", m.Recipients)
		}
	}
	if tarpit.accepted.Load() != 1 {
		t.Fatalf("busy.test got %d connections with a limit of one", tarpit.accepted.Load())
	}
	if m := w.state(first); m.Recipients[0].State != queue.Leased {
		t.Fatalf("the first message is not still in its attempt: %+v", m.Recipients[0])
	}
}

// The window grows by one with each completed transaction, up to the
// maximum, and shrinks by one with each attempt that got no session; a
// refusal of a message (a 5xx reply) is no reason to shrink it.
func TestConcurrencyGrowsOnSuccessAndShrinksOnFailure(t *testing.T) {
	mx := smtptest.Start(t, func(mx *smtptest.MX) {
		mx.RcptReply = func(rcpt string) error {
			if strings.HasPrefix(rcpt, "nobody@") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			}
			return nil
		}
	})
	down := startFakeHost(t, hangUp)
	w := newWorld(t, mx, Route{Match: "down.test", Host: "127.0.0.1", Port: down.Port})
	w.window(2, 4, 0, 0)
	limit := func(domain string) int {
		w.engine.dests.mu.Lock()
		defer w.engine.dests.mu.Unlock()
		if d := w.engine.dests.m[domain]; d != nil {
			return d.limit
		}
		return -1
	}
	for i, want := range []int{3, 4, 4} {
		w.submit(sender, "a@dest.test")
		w.run()
		if got := limit("dest.test"); got != want {
			t.Fatalf("after %d deliveries the window is %d, want %d", i+1, got, want)
		}
	}
	w.submit(sender, "nobody@dest.test")
	w.run()
	if got := limit("dest.test"); got != 4 {
		t.Fatalf("after a refused recipient the window is %d, want 4", got)
	}
	for i, want := range []int{1, 1} {
		w.submit(sender, "a@down.test")
		w.run()
		if got := limit("down.test"); got != want {
			t.Fatalf("after %d failed connections the window is %d, want %d", i+1, got, want)
		}
	}
	// Busy at its window of one: the next attempt is postponed, not run.
	held := w.engine.dests.admit("down.test")
	if held.slot == nil {
		t.Fatal("no slot for down.test with its window empty")
	}
	id := w.submit(sender, "b@down.test")
	w.run()
	if !w.postponed(id) || down.accepted.Load() != 2 {
		t.Fatalf("an attempt at a full window was not postponed (%d connections): %+v", down.accepted.Load(), w.state(id).Recipients[0])
	}
	held.slot.done(noSignal)
}

// After N attempts in a row that got no session, the destination is
// marked dead: its mail is deferred (4.4.1, an attempt like any other)
// without a connection, until the cooldown is over; then one probe goes
// through while the rest wait, and its success revives the destination.
func TestDeadDestinationIsNotDialedUntilItsProbe(t *testing.T) {
	mx := smtptest.Start(t, nil)
	dead := startFakeHost(t, hangUp)
	w := newWorld(t, mx, Route{Match: "dead.test", Host: "127.0.0.1", Port: dead.Port})
	w.window(5, 5, 3, 10*time.Minute)
	var ids []string
	for range 3 {
		ids = append(ids, w.submit(sender, "a@dead.test"))
	}
	w.run()
	if n := dead.accepted.Load(); n != 3 {
		t.Fatalf("%d connections for three attempts", n)
	}
	late := w.submit(sender, "b@dead.test")
	w.run()
	if n := dead.accepted.Load(); n != 3 {
		t.Fatalf("a destination marked dead was dialled again (%d connections)", n)
	}
	r := w.state(late).Recipients[0]
	if r.State != queue.Pending || r.Attempts != 1 || r.LastStatus != "4.4.1" ||
		!strings.Contains(r.LastReply, "dead.test is marked unreachable until 2026-11-28T12:10:00Z, after 3 failed connections") ||
		!r.Due.Equal(w.clock.Now().Add(time.Minute)) {
		t.Fatalf("mail for a dead destination: %+v", r)
	}

	// The cooldown ends; the server now answers, after a while.
	w.clock.Advance(10 * time.Minute)
	release := make(chan struct{})
	var letGo sync.Once
	free := func() { letGo.Do(func() { close(release) }) }
	defer free()
	pass := passTo(mx)
	dead.behave(func(c net.Conn) {
		select {
		case <-release:
		case <-t.Context().Done():
		}
		pass(c)
	})
	probeDone := make(chan int)
	go func() { probeDone <- w.engine.RunDue(context.Background()) }()
	if !eventually(func() bool { return dead.accepted.Load() == 4 }) {
		free()
		<-probeDone
		t.Fatal("no probe after the cooldown")
	}
	leases, err := w.q.Lease(1, time.Minute)
	if err != nil || len(leases) != 1 {
		t.Fatalf("lease: %v %v", leases, err)
	}
	w.engine.process(context.Background(), leases[0])
	waiting := leases[0].Message.ID
	if !w.postponed(waiting) || dead.accepted.Load() != 4 {
		free()
		<-probeDone
		t.Fatalf("a second attempt went beside the probe (%d connections): %+v", dead.accepted.Load(), w.state(waiting).Recipients[0])
	}
	free()
	<-probeDone // the probe delivers, and the rest follow
	w.clock.Advance(time.Minute)
	w.run()
	if n := len(mx.Received()); n != 4 {
		t.Fatalf("%d of 4 messages delivered after the destination came back", n)
	}
	for _, id := range append(ids, late) {
		if _, err := w.q.Get(id); err == nil {
			t.Fatalf("message %s still queued after the destination came back", id)
		}
	}
}
