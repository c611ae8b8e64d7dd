package delivery

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

func testDestinations(c *clock, initial, max, deadAfter int, jitter func(time.Duration) time.Duration) *destinations {
	in := newInstruments()
	return newDestinations(Config{InitialConnectionsPerDomain: initial, MaxConnectionsPerDomain: max,
		DeadDestinationFailures: deadAfter, DeadDestinationCooldown: time.Minute},
		c.Now, jitter, slog.New(slog.NewTextHandler(io.Discard, nil)), &in)
}

// While a destination stays busy, each attempt postponed is given a later
// turn than the last (the slot's hold time over the window), never less
// than postponeMin nor more than postponeMax, with the jitter applied.
func TestPostponementGrowsWhileBusyWithJitter(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	jittered := 0
	ds := testDestinations(c, 2, 2, 0, func(d time.Duration) time.Duration { jittered++; return d + time.Millisecond })
	a, b := ds.admit("slow.test"), ds.admit("slow.test")
	if a.slot == nil || b.slot == nil {
		t.Fatal("no slot within the window")
	}
	c.Advance(40 * time.Second) // both attempts have held their slot 40s
	var waits []time.Duration
	for range 4 {
		adm := ds.admit("slow.test")
		if adm.slot != nil || !adm.dead.IsZero() {
			t.Fatalf("busy destination admitted: %+v", adm)
		}
		waits = append(waits, adm.wait)
	}
	// A turn is 40s / 2: 20s, 40s, 60s, 80s after now, plus the jitter.
	for i, w := range waits {
		if want := time.Duration(i+1)*20*time.Second + time.Millisecond; w != want {
			t.Fatalf("postponements %v, want turns of 20s each (+1ms jitter)", waits)
		}
	}
	if jittered != 4 {
		t.Fatalf("jitter applied %d times for 4 postponements", jittered)
	}
	c.Advance(time.Hour) // attempts an hour old: the turns pass the cap
	if adm := ds.admit("slow.test"); adm.wait != postponeMax+time.Millisecond {
		t.Fatalf("postponement %v past the cap %v", adm.wait, postponeMax)
	}
	a.slot.done(noSignal)
	if adm := ds.admit("slow.test"); adm.slot == nil {
		t.Fatal("a freed slot was not given")
	}
}

// What an attempt learnt counts by the kind of failure: no reply at all is
// a failed connection; a 421 asks to slow down; any other reply, a 5xx
// about the message or a 4xx greeting, shows the destination alive; a TLS
// or policy failure says nothing.
func TestFeedbackOfFailures(t *testing.T) {
	for _, c := range []struct {
		f    *Failure
		want feedback
	}{
		{nil, succeeded},
		{&Failure{Temporary: true, Enhanced: "4.4.1", Text: "connect to mx [192.0.2.1]:25: connection refused"}, connFailed},
		{&Failure{Temporary: true, Enhanced: "4.4.2", Text: "greeting with mx: i/o timeout"}, connFailed},
		{&Failure{Temporary: true, Code: 421, Enhanced: "4.7.0", Text: "too many connections"}, slowDown},
		{&Failure{Code: 550, Enhanced: "5.1.1", Text: "no such user"}, answered},
		{&Failure{Temporary: true, Code: 451, Enhanced: "4.3.0", Text: "try later"}, answered},
		{&Failure{Code: 554, Enhanced: "5.7.1", Text: "go away"}, answered},
		{&Failure{Temporary: true, Enhanced: "4.7.5", ResultType: "certificate-not-trusted", Text: "TLS failed"}, noSignal},
		{&Failure{Temporary: true, Enhanced: "4.7.4", ResultType: "starttls-not-supported", Text: "no STARTTLS"}, noSignal},
		{&Failure{Enhanced: "5.6.7", Text: "no SMTPUTF8"}, noSignal},
	} {
		if got := feedbackOf(c.f); got != c.want {
			t.Errorf("%v: feedback %d, want %d", c.f, got, c.want)
		}
	}
}

// A dead destination's probe that fails marks it dead for another
// cooldown; one that is answered revives it, and its failures start again
// from zero.
func TestDeadDestinationProbe(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	ds := testDestinations(c, 3, 3, 2, func(d time.Duration) time.Duration { return d })
	for range 2 {
		ds.admit("gone.test").slot.done(connFailed)
	}
	if adm := ds.admit("gone.test"); adm.dead != c.Now().Add(time.Minute) || adm.failures != 2 {
		t.Fatalf("after 2 failed attempts: %+v", adm)
	}
	c.Advance(time.Minute)
	probe := ds.admit("gone.test")
	if probe.slot == nil || !probe.slot.probe {
		t.Fatalf("no probe after the cooldown: %+v", probe)
	}
	if adm := ds.admit("gone.test"); adm.slot != nil || adm.wait == 0 {
		t.Fatalf("a second attempt beside the probe: %+v", adm)
	}
	probe.slot.done(connFailed)
	if adm := ds.admit("gone.test"); adm.dead != c.Now().Add(time.Minute) {
		t.Fatalf("a failed probe did not mark the destination dead again: %+v", adm)
	}
	c.Advance(time.Minute)
	ds.admit("gone.test").slot.done(answered) // a 5xx is an answer
	adm := ds.admit("gone.test")
	if adm.slot == nil {
		t.Fatalf("an answered probe did not revive the destination: %+v", adm)
	}
	adm.slot.done(connFailed) // the window is down to one
	if adm := ds.admit("gone.test"); adm.slot == nil {
		t.Fatal("one failure after the revival marked the destination dead: failures were not reset")
	}
}

// Without a maximum (MaxConnectionsPerDomain 0) the window has no limit,
// and a success does not overflow it.
func TestUnlimitedWindow(t *testing.T) {
	c := &clock{now: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	ds := testDestinations(c, 0, 0, 0, func(d time.Duration) time.Duration { return d })
	for range 100 {
		if adm := ds.admit("big.test"); adm.slot == nil {
			t.Fatal("an unlimited window refused an attempt")
		}
	}
	ds.admit("big.test").slot.done(succeeded)
	if adm := ds.admit("big.test"); adm.slot == nil {
		t.Fatal("a success closed an unlimited window")
	}
}
