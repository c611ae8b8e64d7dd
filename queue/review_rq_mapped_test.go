package queue

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// The queue lets go of mapped pages (dropMapped) in Stats, Lease and
// Recover while other goroutines read values that are slices of the same
// map, and while commits grow the file (bbolt remaps then). Nothing read
// may change: every body read back, every envelope decoded, is the one
// enqueued, and no lease is granted twice.
func TestDroppingMappedPagesUnderLoadKeepsWhatIsRead(t *testing.T) {
	if testing.Short() {
		t.Skip("load")
	}
	q := openTest(t, wallClock{}, t.TempDir(), 0)
	defer q.Close()
	const n = 1200 // more than dropEvery unleased: Lease lets go of the map too
	bodyOf := func(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("message %05d ", i)), 200) }
	var (
		mu     sync.Mutex
		ids    = map[string]int{}
		leased = map[string]uint64{}
		done   = make(chan struct{})
		wg     sync.WaitGroup
		fail   = make(chan string, 16)
	)
	report := func(f string, a ...any) {
		select {
		case fail <- fmt.Sprintf(f, a...):
		default:
		}
	}
	wg.Add(4)
	go func() { // submissions, one in ten handed over with their lease
		defer wg.Done()
		defer close(done)
		for i := 0; i < n; i++ {
			env := envelope(fmt.Sprintf("r%d@x.test", i))
			env.EnvelopeID = fmt.Sprint(i)
			id, l, err := q.EnqueueLeased("", env, bytes.NewReader(bodyOf(i)), nil, time.Hour, func() bool { return i%10 == 0 })
			if err != nil {
				report("enqueue %d: %v", i, err)
				return
			}
			mu.Lock()
			ids[id] = i
			if l != nil {
				leased[id] = l.Seq
			}
			mu.Unlock()
		}
	}()
	go func() { // metrics scrapes: each lets go of the whole map
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := q.Stats(); err != nil {
				report("stats: %v", err)
				return
			}
		}
	}()
	go func() { // the scheduler: every lease granted once, on unleased mail
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			ls, err := q.Lease(64, time.Hour)
			if err != nil {
				report("lease: %v", err)
				return
			}
			mu.Lock()
			for _, l := range ls {
				if seq, ok := leased[l.Message.ID]; ok {
					report("%s leased twice (seq %d, then %d)", l.Message.ID, seq, l.Seq)
				}
				leased[l.Message.ID] = l.Seq
			}
			mu.Unlock()
		}
	}()
	go func() { // readers: envelopes and bodies as enqueued
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			mu.Lock()
			var id string
			var i int
			for id, i = range ids {
				break
			}
			mu.Unlock()
			if id == "" {
				continue
			}
			m, err := q.Get(id)
			if err != nil || m.EnvelopeID != fmt.Sprint(i) {
				report("get %s: %v, envelope %q, want %d", id, err, m.EnvelopeID, i)
				return
			}
			rc, err := q.Body(id)
			if err != nil {
				report("body %s: %v", id, err)
				return
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(b, bodyOf(i)) {
				report("body of %s is not what was enqueued", id)
				return
			}
		}
	}()
	wg.Wait()
	close(fail)
	var msgs []string
	for f := range fail {
		msgs = append(msgs, f)
	}
	if len(msgs) > 0 {
		t.Fatal(strings.Join(msgs, "\n"))
	}
	if _, err := q.Recover(); err != nil {
		t.Fatal(err)
	}
	st, err := q.Stats()
	if err != nil || st.Recipients != n {
		t.Fatalf("after the run: %+v, %v; want %d recipients", st, err, n)
	}
}
