package queue

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// RecoveryReport says what Recover found.
type RecoveryReport struct {
	Messages       int      // messages in the queue
	Recipients     int      // recipients still to be delivered
	Held           int      // messages on hold
	LeasesReturned int      // recipients that were in flight when the last process stopped
	OrphansRemoved int      // spool files no committed message referred to
	MissingBodies  []string // messages whose spool file is gone (damaged storage)
}

// Recover prepares the queue for a freshly started daemon: leases held by the
// previous process are returned (its workers are gone, so those recipients are
// due now; a delivery that was in flight may be repeated, which is the price of
// never losing one), the schedule index is rebuilt from the messages, and
// spool files that no committed message owns are removed (they belong to
// submissions that were never acknowledged). Call it before any worker runs.
func (q *Queue) Recover() (RecoveryReport, error) {
	var rep RecoveryReport
	spooled := map[string]bool{}
	err := q.update(func(tx *bolt.Tx) error {
		rep = RecoveryReport{}
		clear(spooled)
		now := q.clock()
		if err := tx.DeleteBucket(bucketSchedule); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketSchedule); err != nil {
			return err
		}
		var changed []*Message
		err := tx.Bucket(bucketMessages).ForEach(func(k, v []byte) error {
			m := new(Message)
			if err := json.Unmarshal(v, m); err != nil {
				return fmt.Errorf("decode message %s: %w", k, err)
			}
			rep.Messages++
			if rep.Messages%dropEvery == 0 {
				// Nothing is allocated while the walk runs, so the map
				// stays where it is (see dropMapped).
				dropMapped(q.db, tx.Size())
			}
			if m.Held {
				rep.Held++
			}
			if m.Spooled {
				spooled[m.ID] = true
			}
			if n := returnLeases(m, now); n > 0 || m.RetireSeq != 0 {
				rep.LeasesReturned += n
				changed = append(changed, m)
			}
			for _, r := range m.Recipients {
				if !r.State.Final() {
					rep.Recipients++
				}
			}
			if t, ok := m.wake(); ok && m.RetireSeq == 0 {
				return tx.Bucket(bucketSchedule).Put(scheduleKey(t, m.ID), nil)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, m := range changed {
			m.RetireDue, m.RetireSeq = time.Time{}, 0
			if err := putMessage(tx, m, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("recover queue: %w", err)
	}
	// The scan read every envelope through the memory map; the daemon does
	// not need them resident, and they drag the bodies beside them along
	// (see dropMapped). A failure costs memory only, and is not fatal.
	q.view(func(tx *bolt.Tx) error { dropMapped(q.db, tx.Size()); return nil })
	rep.OrphansRemoved, rep.MissingBodies, err = q.reconcileSpool(spooled)
	return rep, err
}

// dropEvery is how many envelopes Recover and Lease read between releases
// of the pages they touched: 1,024 envelopes are about 100 pages, which
// fault-around makes about 6 MB of resident memory at most.
const dropEvery = 1024

func returnLeases(m *Message, now time.Time) int {
	n := 0
	for i := range m.Recipients {
		r := &m.Recipients[i]
		if r.State == Leased {
			r.State, r.Due, r.Lease = Pending, now, 0
			n++
		}
	}
	return n
}

func (q *Queue) reconcileSpool(owned map[string]bool) (removed int, missing []string, err error) {
	entries, err := os.ReadDir(q.spoolDir)
	if err != nil {
		return 0, nil, fmt.Errorf("read spool directory: %w", err)
	}
	present := map[string]bool{}
	for _, e := range entries {
		if owned[e.Name()] {
			present[e.Name()] = true
			continue
		}
		if err := os.Remove(q.spoolPath(e.Name())); err == nil {
			removed++
		}
	}
	for id := range owned {
		if !present[id] {
			missing = append(missing, id)
		}
	}
	return removed, missing, nil
}
