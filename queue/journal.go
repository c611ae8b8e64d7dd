package queue

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The journal is an append-only log of opaque entries written together
// with delivery outcomes (Outcome.Journal). The queue keeps them in time
// order and knows nothing of what they say; its users keep evidence there
// because it then costs no extra fsync and cannot disagree with the queue.

// JournalEntry is one entry, with the time it was written.
type JournalEntry struct {
	Time time.Time
	Data []byte
}

// journal appends the entries of the outcomes that apply (their recipient
// was leased under seq), and those of every delivery made under a lost
// lease (see Record), under keys that sort by time.
func journal(tx *bolt.Tx, before *Message, seq uint64, outcomes []Outcome, now time.Time) error {
	for _, o := range outcomes {
		if len(o.Journal) == 0 || o.Result == ResultReturned || o.Result == ResultPostponed || o.Recipient < 0 || o.Recipient >= len(before.Recipients) {
			continue
		}
		// A delivery is a fact whoever holds the recipient now, even one
		// that has recorded its own outcome first (a second copy, or a
		// failure the bounce will report): its evidence is kept.
		if !held(before, seq, o) && o.Result != ResultDelivered {
			continue
		}
		if err := appendJournal(tx, now, o.Journal); err != nil {
			return err
		}
	}
	return nil
}

// journalGone appends the entries of the deliveries among outcomes whose
// message is no longer queued (see Record).
func journalGone(tx *bolt.Tx, outcomes []Outcome, now time.Time) error {
	for _, o := range outcomes {
		if o.Result != ResultDelivered {
			continue
		}
		if err := appendJournal(tx, now, o.Journal); err != nil {
			return err
		}
	}
	return nil
}

// appendJournal writes entries at now, in order.
func appendJournal(tx *bolt.Tx, now time.Time, entries [][]byte) error {
	b := tx.Bucket(bucketJournal)
	for _, entry := range entries {
		n, err := b.NextSequence()
		if err != nil {
			return err
		}
		if err := b.Put(journalKey(now, n), entry); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
	}
	return nil
}

func journalKey(t time.Time, n uint64) []byte {
	k := make([]byte, 16)
	if ns := t.UnixNano(); ns > 0 && t.After(time.Unix(0, 0)) { // the zero time and earlier sort first
		binary.BigEndian.PutUint64(k, uint64(ns))
	}
	binary.BigEndian.PutUint64(k[8:], n)
	return k
}

// ReadJournal calls fn for each entry written in [from, to), oldest first,
// until fn returns false. A zero to means no upper bound.
func (q *Queue) ReadJournal(from, to time.Time, fn func(JournalEntry) bool) error {
	return q.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJournal).Cursor()
		for k, v := c.Seek(journalKey(from, 0)); k != nil; k, v = c.Next() {
			t := time.Unix(0, int64(binary.BigEndian.Uint64(k)))
			if !to.IsZero() && !t.Before(to) {
				return nil
			}
			if !fn(JournalEntry{Time: t, Data: append([]byte(nil), v...)}) {
				return nil
			}
		}
		return nil
	})
}

// ReadJournalNewestFirst calls fn for each entry written in [from, to),
// newest first, until fn returns false. A zero to means no upper bound.
func (q *Queue) ReadJournalNewestFirst(from, to time.Time, fn func(JournalEntry) bool) error {
	return q.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketJournal).Cursor()
		var k, v []byte
		if to.IsZero() {
			k, v = c.Last()
		} else if k, v = c.Seek(journalKey(to, 0)); k == nil {
			k, v = c.Last() // nothing at or after to: start from the newest
		} else {
			k, v = c.Prev() // the entry found is at or after to
		}
		for ; k != nil; k, v = c.Prev() {
			t := time.Unix(0, int64(binary.BigEndian.Uint64(k)))
			if t.Before(from) {
				return nil
			}
			if !fn(JournalEntry{Time: t, Data: append([]byte(nil), v...)}) {
				return nil
			}
		}
		return nil
	})
}

// PruneJournal deletes the entries written before cutoff and says how many.
func (q *Queue) PruneJournal(cutoff time.Time) (int, error) {
	n := 0
	err := q.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJournal)
		end := string(journalKey(cutoff, 0))
		var old [][]byte
		c := b.Cursor()
		for k, _ := c.First(); k != nil && string(k) < end; k, _ = c.Next() {
			old = append(old, append([]byte(nil), k...))
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	return n, err
}
