package queue

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// rssFileKB is the part of this process's resident memory that is mapped
// files (the queue database's pages among them), or -1 where /proc does not
// tell.
func rssFileKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "RssFile:"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				v, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil {
					return v
				}
			}
		}
	}
	return -1
}

// What the daemon does at start with a full queue (Open and its check,
// Recover, a Stats for the metrics, a Lease of everything due) reads
// envelopes, never bodies, and leaves few pages of the memory map resident:
// far fewer than the body bytes queued. bbolt's Check, which Open ran
// before, read every page through the map (RssFile grew by the whole file);
// and reading only the envelopes maps the body pages beside them as well
// (fault-around), unless Recover lets go of them (dropMapped).
func TestStartupDoesNotTouchBodyPages(t *testing.T) {
	if rssFileKB() < 0 {
		t.Skip("no RssFile in /proc/self/status")
	}
	const n, size = 8000, 4000 // 32 MB of bodies, each about a page
	dir := t.TempDir()
	clock := newClock()
	q := openTest(t, clock, dir, 0)
	body := strings.Repeat("x", size)
	// Ten messages a commit, as concurrent submissions share one: each
	// commit writes envelope and body pages side by side in the file.
	for i := 0; i < n; i += 10 {
		err := q.update(func(tx *bolt.Tx) error {
			for j := i; j < i+10; j++ {
				m, inline, err := q.prepare(q.NewID(), envelope(fmt.Sprintf("rcpt%d@x.test", j)), strings.NewReader(body))
				if err != nil {
					return err
				}
				if err := putNew(tx, m, inline); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	q.Close()

	before := rssFileKB()
	q = openTest(t, clock, dir, 0)
	defer q.Close()
	rep, err := q.Recover()
	if err != nil || rep.Messages != n {
		t.Fatalf("recover: %+v, %v", rep, err)
	}
	if st, err := q.Stats(); err != nil || st.Recipients != n {
		t.Fatalf("stats: %+v, %v", st, err)
	}
	// The scheduler leases as many as there are workers free, until
	// everything due is leased.
	for leased := 0; leased < n; {
		leases, err := q.Lease(16, time.Minute)
		if err != nil || len(leases) == 0 {
			t.Fatalf("lease after %d: %d leases, %v", leased, len(leases), err)
		}
		leased += len(leases)
	}
	grew := rssFileKB() - before
	bodies := int64(n*size) >> 10
	t.Logf("RssFile grew by %d kB at start with %d kB of bodies queued", grew, bodies)
	if grew > bodies/3 {
		t.Fatalf("RssFile grew by %d kB at start with %d kB of bodies queued: the start read the bodies", grew, bodies)
	}
}
