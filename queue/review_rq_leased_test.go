package queue

import (
	"strings"
	"testing"
	"time"
)

// slowBody is a body whose client takes its time: each read moves the
// clock on.
type slowBody struct {
	r     *strings.Reader
	clock *fakeClock
	step  time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	b.clock.Advance(b.step)
	return b.r.Read(p[:min(len(p), 64)])
}

// The lease EnqueueLeased hands over is the worker's from the commit for
// its whole hold, however long the client took to send the body: a lease
// counted from when the body began to arrive has run out by the time the
// worker gets it (a slow client, a large message), and the scheduler hands
// the same recipients to a second worker while the first delivers them.
func TestEnqueueLeasedHoldCountsFromTheCommit(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	const hold = time.Minute
	body := &slowBody{r: strings.NewReader(strings.Repeat("x", 64*10)), clock: clock, step: 10 * time.Second}
	_, l, err := q.EnqueueLeased("", envelope("a@x.test"), body, nil, hold, nil)
	if err != nil || l == nil {
		t.Fatalf("enqueue leased: %v, lease %v", err, l)
	}
	if want := clock.Now().Add(hold); l.Until.Before(want) {
		t.Fatalf("the lease ends at %s, %s after the commit; want %s", l.Until.Format(time.TimeOnly), l.Until.Sub(clock.Now()), hold)
	}
	if leases, err := q.Lease(10, hold); err != nil || len(leases) != 0 {
		t.Fatalf("the scheduler was handed the recipients the enqueue leased: %d leases, %v", len(leases), err)
	}
}
