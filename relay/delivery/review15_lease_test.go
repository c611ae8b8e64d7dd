package delivery

import (
	"testing"
	"time"
	"unsafe"
)

// stepWall moves c's wall clock forward by d and leaves its monotonic
// reading where it was: what the system clock does when NTP steps it, or
// when a suspended machine (a VM being migrated, a laptop) resumes. The
// time package has no way to make such a reading but time.Now across a
// real step, so the test edits the reading in place: a monotonic time.Time
// is {wall, ext, loc} with ext the monotonic nanoseconds.
func (c *clock) stepWall(t *testing.T, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.now
	after := before.Add(d)
	(*struct {
		wall uint64
		ext  int64
		loc  *time.Location
	})(unsafe.Pointer(&after)).ext -= int64(d)
	if after.Sub(before) != 0 || after.Round(0).Sub(before.Round(0)) != d {
		t.Fatalf("could not step the wall clock alone: monotonic %v, wall %v", after.Sub(before), after.Round(0).Sub(before.Round(0)))
	}
	c.now = after
}

// The queue schedules by the wall clock (its schedule keys and stored due
// times carry no monotonic reading), so a lease runs out when the wall clock
// passes its deadline. The renewal must therefore judge the time left by
// the wall clock too. Deadlines and clock readings in production come from
// time.Now and carry monotonic readings, and Time.Sub then uses those: after
// the wall clock steps forward (NTP, a resumed VM) the renewal still sees
// the whole lease left while the queue already hands the recipient to a
// second worker, which delivers it again.
func TestRenewalFollowsTheWallClockTheQueueSchedulesBy(t *testing.T) {
	mx, inRcpt, letGo := slowMX(t)
	w := newWorld(t, mx) // lease_time 10m
	w.clock.mu.Lock()
	w.clock.now = time.Now() // a reading with a monotonic clock, as in production
	w.clock.mu.Unlock()
	w.engine.renewCheck = time.Millisecond
	id := w.submit(sender, "a@dest.test")
	done := make(chan struct{})
	go func() { w.run(); close(done) }()
	defer func() { letGo(); <-done }()
	<-inRcpt

	w.clock.stepWall(t, 7*time.Minute) // 3 of the lease's 10 minutes left by the wall clock
	renewed := eventually(func() bool {
		m, err := w.q.Get(id)
		return err == nil && m.Recipients[0].Due.Sub(w.clock.Now().Round(0)) > 5*time.Minute
	})
	w.clock.stepWall(t, 4*time.Minute) // past the lease as first granted
	second, err := w.q.Lease(10, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !renewed || len(second) != 0 {
		t.Fatalf("after the wall clock stepped 7m then 4m into a 10m lease: renewed %v, recipient leased to a second worker %v", renewed, len(second) != 0)
	}
}
