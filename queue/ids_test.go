package queue

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
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

// A message whose spool file is gone says so in Get, List and Stats, and
// the flag is never stored with it.
func TestBodyGoneIsReported(t *testing.T) {
	dir := t.TempDir()
	q := openTest(t, newClock(), dir, 4)
	defer q.Close()
	id, _ := q.Enqueue("", envelope("a@x.test"), strings.NewReader("a large body"))
	whole, _ := q.Enqueue("", envelope("b@x.test"), strings.NewReader("another body"))
	if err := os.Remove(filepath.Join(dir, "spool", id)); err != nil {
		t.Fatal(err)
	}
	if m := mustGet(t, q, id); !m.BodyGone {
		t.Fatal("Get: body not reported gone")
	}
	if m := mustGet(t, q, whole); m.BodyGone {
		t.Fatal("Get: a whole message reported without its body")
	}
	list, _ := q.List(Filter{})
	if len(list) != 2 || list[0].BodyGone == list[1].BodyGone {
		t.Fatalf("List: %+v", list)
	}
	if st, _ := q.Stats(); st.BodyGone != 1 {
		t.Fatalf("Stats: %+v", st)
	}
	if _, err := q.Body(id); !errors.Is(err, ErrBodyGone) {
		t.Fatalf("Body: %v", err)
	}
	q.Hold(id) // rewrites the stored message
	if err := q.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMessages).Get([]byte(id)); strings.Contains(string(v), "body_gone") {
			t.Errorf("stored: %s", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
