package queue

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkEnqueue measures durable (fsynced) enqueues of 2 KB messages by
// 1 and by 16 concurrent submitters; group commit is what lets the second
// go faster than the disk's fsync rate.
func BenchmarkEnqueue(b *testing.B) {
	for _, clients := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			q := openTest(b, wallClock{}, b.TempDir(), 0)
			defer q.Close()
			body := bytes.Repeat([]byte("x"), 2048)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var next atomic.Int64
			var wg sync.WaitGroup
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if _, err := q.Enqueue("", envelope("a@x.test"), bytes.NewReader(body)); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkLease measures granting leases on due messages, 100 at a time.
func BenchmarkLease(b *testing.B) {
	q := openTest(b, wallClock{}, b.TempDir(), 0)
	defer q.Close()
	b.ReportAllocs()
	const batch = 100
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		var wg sync.WaitGroup
		for c := 0; c < batch; c++ {
			wg.Add(1)
			go func() { defer wg.Done(); q.Enqueue("", envelope("a@x.test"), bytes.NewReader([]byte("x"))) }()
		}
		wg.Wait()
		b.StartTimer()
		l, err := q.Lease(batch, time.Minute)
		if err != nil || len(l) != batch {
			b.Fatalf("leased %d: %v", len(l), err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "leases/s")
}

// BenchmarkStats counts a queue of 10,000 messages, as each metrics scrape
// and status page view does (at most once a second, cached).
//
//	go test ./queue -run '^$' -bench Stats
func BenchmarkStats(b *testing.B) {
	q := openTest(b, wallClock{}, b.TempDir(), 0)
	defer q.Close()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 10000; i += 16 {
				q.Enqueue("", envelope(fmt.Sprintf("r%d@x.test", i)), strings.NewReader("x"))
			}
		}()
	}
	wg.Wait()
	for b.Loop() {
		st, err := q.Stats()
		if err != nil || st.Messages["active"] != 10000 {
			b.Fatalf("%+v %v", st, err)
		}
	}
}

// BenchmarkEnqueueForWorker compares the two ways 16 submitters' messages
// reach a delivery worker: enqueue, then a lease of their own (the
// scheduler's way), or the lease taken in the enqueue transaction
// (EnqueueLeased, a hand-over). Both ride the group committer.
//
//	go test ./queue -run '^$' -bench EnqueueForWorker -benchtime 2s
func BenchmarkEnqueueForWorker(b *testing.B) {
	for _, way := range []string{"enqueue+lease", "leased"} {
		b.Run(way, func(b *testing.B) {
			q := openTest(b, wallClock{}, b.TempDir(), 0)
			defer q.Close()
			body := bytes.Repeat([]byte("x"), 2048)
			b.ReportAllocs()
			var next atomic.Int64
			var wg sync.WaitGroup
			for c := 0; c < 16; c++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						var err error
						if way == "leased" {
							_, _, err = q.EnqueueLeased("", envelope("a@x.test"), bytes.NewReader(body), nil, time.Minute, nil)
						} else if _, err = q.Enqueue("", envelope("a@x.test"), bytes.NewReader(body)); err == nil {
							_, err = q.Lease(1, time.Minute)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
