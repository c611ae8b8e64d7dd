package queue

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A colliding ID must never replace an acknowledged message, whether the
// bodies live in bbolt or in the spool directory.
func TestEnqueueRefusesAnExistingID(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inline int64
	}{{"inline", 0}, {"spooled", 4}} {
		t.Run(tc.name, func(t *testing.T) {
			q := openTest(t, newClock(), t.TempDir(), tc.inline)
			defer q.Close()
			id := q.NewID()
			if _, err := q.Enqueue(id, envelope("first@x.test"), strings.NewReader("the first body")); err != nil {
				t.Fatal(err)
			}
			_, err := q.Enqueue(id, envelope("second@x.test"), strings.NewReader("the second body"))
			if !errors.Is(err, ErrExists) {
				t.Fatalf("second enqueue under %s: %v, want ErrExists", id, err)
			}
			m, err := q.Get(id)
			if err != nil || m.Recipients[0].Addr != "first@x.test" {
				t.Fatalf("first message replaced: %+v %v", m.Recipients, err)
			}
			if got := string(readBody(t, q, id)); got != "the first body" {
				t.Fatalf("first body replaced: %q", got)
			}
		})
	}
}

// IDs of one process keep growing when the clock steps back, so the
// counter, not luck, keeps them apart.
func TestIDsGrowWhenTheClockStepsBack(t *testing.T) {
	clock := newClock()
	q := openTest(t, clock, t.TempDir(), 0)
	defer q.Close()
	last := q.NewID()
	for step := 0; step < 3; step++ {
		clock.Advance(-time.Hour)
		for i := 0; i < 1000; i++ {
			id := q.NewID()
			if id <= last {
				t.Fatalf("after the clock stepped back, %s does not sort after %s", id, last)
			}
			last = id
		}
	}
}
