package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Lease is work handed to one worker: some recipients of one message, or the
// retirement of a message whose recipients are all final.
type Lease struct {
	Message    Message // snapshot taken when the lease was granted
	Recipients []int   // indexes into Message.Recipients; empty when Retire
	Retire     bool
	Seq        uint64
	Until      time.Time
}

// Due counts the messages with work due now, up to max, in a read
// transaction: what a scheduler needs to know before it sets workers
// aside for a Lease.
func (q *Queue) Due(max int) (int, error) {
	var n int
	err := q.view(func(tx *bolt.Tx) error { n = len(dueIDs(tx, q.clock(), max)); return nil })
	return n, err
}

// Lease grants up to max leases on due work, each held for hold. A lease that
// runs out makes its recipients due again, so a worker that dies loses nothing.
func (q *Queue) Lease(max int, hold time.Duration) ([]Lease, error) {
	// A look first, in a read transaction: a write transaction with
	// nothing to write still costs a commit and an fsync, and the
	// scheduler looks after every submission and every attempt.
	var due bool
	if err := q.view(func(tx *bolt.Tx) error { due = len(dueIDs(tx, q.clock(), 1)) > 0; return nil }); err != nil || !due {
		return nil, err
	}
	var leases []Lease
	err := q.update(func(tx *bolt.Tx) error {
		leases = leases[:0]
		now := q.clock()
		due := dueIDs(tx, now, max)
		if q.readSinceDrop += len(due); q.readSinceDrop >= dropEvery {
			// The scheduler goes through the whole queue in time; what it
			// read is not needed resident (see dropMapped). Nothing has
			// been allocated yet in this transaction: the map stays put.
			q.readSinceDrop = 0
			dropMapped(q.db, tx.Size())
		}
		for _, id := range due {
			old, err := getMessage(tx, id)
			if err != nil {
				return err
			}
			m := old.clone()
			l, ok := grant(&m, now, hold)
			if err := putMessage(tx, &m, old); err != nil {
				return err
			}
			if ok {
				leases = append(leases, l)
			}
		}
		return nil
	})
	return leases, err
}

func dueIDs(tx *bolt.Tx, now time.Time, max int) []string {
	var ids []string
	limit := uint64(now.UnixNano())
	c := tx.Bucket(bucketSchedule).Cursor()
	for k, _ := c.First(); k != nil && len(ids) < max; k, _ = c.Next() {
		if binary.BigEndian.Uint64(k[:8]) > limit {
			break
		}
		ids = append(ids, string(k[8:]))
	}
	return ids
}

// grant takes a lease on whatever in m is due at now.
func grant(m *Message, now time.Time, hold time.Duration) (Lease, bool) {
	until := now.Add(hold)
	if m.Done() {
		if m.RetireDue.After(now) {
			return Lease{}, false
		}
		m.LeaseSeq++
		m.RetireDue, m.RetireSeq = until, m.LeaseSeq
		return Lease{Message: m.clone(), Retire: true, Seq: m.LeaseSeq, Until: until}, true
	}
	var due []int
	for i, r := range m.Recipients {
		if !r.State.Final() && !r.Due.After(now) {
			due = append(due, i)
		}
	}
	if len(due) == 0 {
		return Lease{}, false
	}
	m.LeaseSeq++
	for _, i := range due {
		r := &m.Recipients[i]
		r.State, r.Due, r.Lease = Leased, until, m.LeaseSeq
	}
	return Lease{Message: m.clone(), Recipients: due, Seq: m.LeaseSeq, Until: until}, true
}

// Result is the outcome of one attempt at one recipient.
type Result uint8

const (
	ResultDelivered Result = iota + 1
	ResultDeferred
	ResultFailed
	// ResultReturned gives a recipient back unattempted, due at once: the
	// worker stopped (a shutdown) before it could learn anything. It does
	// not count as an attempt.
	ResultReturned
	// ResultPostponed gives a recipient back unattempted, due at RetryAt:
	// the worker chose not to try it now (its destination had no free
	// connection). Like ResultReturned it is not an attempt: the attempt
	// count and the last reply are left as they were; only DelayNotified
	// is recorded, when the outcome carries the recipient's delay notice.
	ResultPostponed
)

// Outcome reports what happened to one leased recipient.
type Outcome struct {
	Recipient int    // index into Message.Recipients
	Result    Result //
	Reply     string // what the next hop said, or why we did not get that far
	// Status is Reply's enhanced status code (RFC 3463), such as "5.1.1",
	// kept apart so that notices need not read it out of the text.
	Status  string
	Host    string // the server that said it, if one did
	RetryAt time.Time
	// DelayNotified marks that a delay notice for the recipient is among
	// the Notices of this Record's outcomes. It is recorded only if every
	// notice of the Record was queued (see Record).
	DelayNotified bool
	// Notices (such as a delay notice to the sender) are enqueued in the
	// same transaction as the outcome, and only if it applies: a crash or a
	// lost lease can neither send a notice whose outcome is not recorded,
	// nor record one whose notice is not queued.
	Notices []Draft
	// Journal entries are appended to the journal in the same transaction
	// as the outcome (only if the outcome is applied), so that what the
	// caller records about a delivery is durable exactly when the delivery is.
	Journal [][]byte
}

// Record stores the outcomes of a lease and returns the message as it now
// stands. When the message is Done the caller should build its notices and
// Retire it under the same lease sequence, returned in Message.RetireSeq.
//
// Outcomes for recipients whose lease was lost (it ran out and was granted
// again, or the daemon restarted) do not change their recipients, with one
// exception: a delivery that happened is a fact, and a recipient that is not
// yet final is marked Delivered all the same, so that it is not tried again.
// Its journal entries are kept, even when the recipient is final already
// (the new holder delivered it too, or failed it): evidence of a delivery is
// never dropped. If no outcome was under the lease, the error is ErrLeaseLost, once
// what was kept is durable; the returned Message then has RetireSeq set only
// if this call made the message Done and the caller is to retire it. If
// the message is gone (retired by the worker that took the lease over, or
// deleted), the evidence of the deliveries among outcomes is journalled all
// the same, and the error is ErrNotFound.
//
// quiet, when given, is asked (inside the transaction; it must not do I/O)
// whether a Done message needs no notice at all; if so it is retired in the
// same transaction, and the returned Message has RetireSeq zero.
func (q *Queue) Record(id string, seq uint64, outcomes []Outcome, quiet ...func(Message) bool) (Message, error) {
	var out Message
	var spooled, lost bool
	var drafts []Draft
	for _, o := range outcomes {
		drafts = append(drafts, o.Notices...)
	}
	notices, err := q.prepareDrafts(drafts)
	if err != nil {
		return Message{}, fmt.Errorf("record %s: %w", id, err)
	}
	var queued []prepared
	var gone bool
	err = q.update(func(tx *bolt.Tx) error {
		spooled, lost, queued, gone = false, false, nil, false
		old, err := getMessage(tx, id)
		if errors.Is(err, ErrNotFound) {
			// Retired by the worker that took the lease over, or deleted
			// under the attempt: a delivery made all the same is a fact,
			// and its evidence is kept.
			gone = true
			return journalGone(tx, outcomes, q.clock())
		}
		if err != nil {
			return err
		}
		now := q.clock()
		m := old.clone()
		// A notice rides on one outcome but may cover others (a delay
		// notice names every recipient deferred): if one is not queued
		// because its outcome's recipient is no longer held, no recipient
		// may be marked as told.
		allQueued := true
		for _, o := range outcomes {
			allQueued = allQueued && (len(o.Notices) == 0 || held(old, seq, o))
		}
		applied, late := apply(&m, seq, outcomes, now, allQueued)
		lost = applied == 0 && len(outcomes) > 0
		if err := journal(tx, old, seq, outcomes, now); err != nil {
			return err
		}
		next := notices
		for _, o := range outcomes {
			mine := next[:len(o.Notices)]
			next = next[len(o.Notices):]
			if !held(old, seq, o) {
				continue
			}
			for _, p := range mine {
				if err := putNew(tx, p.m, p.inline); err != nil {
					return err
				}
			}
			queued = append(queued, mine...)
		}
		if lost && late == 0 {
			out = old.clone()
			out.RetireSeq = 0 // not this caller's to retire
			return nil
		}
		if m.Done() && len(quiet) > 0 && quiet[0](m) {
			out = m.clone()
			out.RetireSeq = 0
			spooled = m.Spooled
			return deleteMessage(tx, old)
		}
		if m.Done() && old.RetireSeq == 0 {
			// The worker that finished the message retires it; the lease is
			// its own, and ends like the recipients' did.
			m.LeaseSeq++
			m.RetireDue, m.RetireSeq = latestLeaseEnd(old, seq, now), m.LeaseSeq
		}
		out = m.clone()
		return putMessage(tx, &m, old)
	})
	if err != nil {
		queued = nil // the transaction that put them was rolled back
	}
	q.removeUnqueued(notices, queued)
	if err == nil && spooled {
		os.Remove(q.spoolPath(id))
	}
	if err == nil && gone {
		err = fmt.Errorf("record %s: %w (the evidence of its deliveries is kept)", id, ErrNotFound)
	}
	if err == nil && lost {
		err = fmt.Errorf("record %s: %w (the evidence of the attempt is kept)", id, ErrLeaseLost)
	}
	return out, err
}

// apply changes m by the outcomes and says how many were under the lease
// seq, and how many late deliveries (of a lost lease) it recorded.
// DelayNotified is recorded only when notified is true (every notice of the
// outcomes was queued).
func apply(m *Message, seq uint64, outcomes []Outcome, now time.Time, notified bool) (applied, late int) {
	for _, o := range outcomes {
		if o.Recipient < 0 || o.Recipient >= len(m.Recipients) {
			continue
		}
		r := &m.Recipients[o.Recipient]
		if r.State != Leased || r.Lease != seq {
			if o.Result == ResultDelivered && !r.State.Final() {
				// The next hop took it: whoever holds the recipient now
				// must not send it again (its own outcome will be late).
				r.Attempts++
				r.LastAttempt, r.LastReply, r.LastStatus, r.LastHost = now, o.Reply, o.Status, o.Host
				r.State, r.FinalAt, r.Lease = Delivered, now, 0
				late++
			}
			continue
		}
		applied++
		switch o.Result {
		case ResultReturned:
			r.State, r.Due, r.Lease = Pending, now, 0
			continue
		case ResultPostponed:
			r.State, r.Due, r.Lease = Pending, o.RetryAt, 0
			if r.Due.Before(now) {
				r.Due = now
			}
			// A delay notice may go with it (the sender is owed one
			// however the mail was held).
			r.DelayNotified = r.DelayNotified || (o.DelayNotified && notified)
			continue
		}
		r.Attempts++
		r.LastAttempt, r.LastReply, r.LastStatus, r.LastHost, r.Lease = now, o.Reply, o.Status, o.Host, 0
		r.DelayNotified = r.DelayNotified || (o.DelayNotified && notified)
		switch o.Result {
		case ResultDelivered:
			r.State, r.FinalAt = Delivered, now
		case ResultFailed:
			r.State, r.FinalAt = Failed, now
		default:
			r.State, r.Due = Pending, o.RetryAt
			if r.Due.Before(now) {
				r.Due = now
			}
		}
	}
	return applied, late
}

// Renew extends a lease that is still held to hold from now, so that an
// attempt that runs long keeps its recipients and no second worker is handed
// them meanwhile. It returns the new deadline, or ErrLeaseLost when none of
// the lease's recipients is held under seq any more.
func (q *Queue) Renew(id string, seq uint64, hold time.Duration) (time.Time, error) {
	var until time.Time
	err := q.modify(id, func(m *Message, now time.Time) error {
		until = now.Add(hold)
		held := 0
		for i := range m.Recipients {
			if r := &m.Recipients[i]; r.State == Leased && r.Lease == seq {
				r.Due = until
				held++
			}
		}
		if held == 0 {
			return fmt.Errorf("renew lease %d of %s: %w", seq, id, ErrLeaseLost)
		}
		return nil
	})
	return until, err
}

// held reports whether o's recipient was leased under seq in before.
func held(before *Message, seq uint64, o Outcome) bool {
	if o.Recipient < 0 || o.Recipient >= len(before.Recipients) {
		return false
	}
	r := before.Recipients[o.Recipient]
	return r.State == Leased && r.Lease == seq
}

func latestLeaseEnd(old *Message, seq uint64, now time.Time) time.Time {
	end := now.Add(time.Minute)
	for _, r := range old.Recipients {
		if r.State == Leased && r.Lease == seq && r.Due.After(end) {
			end = r.Due
		}
	}
	return end
}

// Draft is a new message to enqueue together with a retirement, such as a
// delivery status notification for the retired message's sender.
type Draft struct {
	Envelope Envelope
	Body     []byte
}

// Retire removes a finished message and enqueues its notices in the same
// transaction, so that neither happens without the other.
func (q *Queue) Retire(id string, seq uint64, notices ...Draft) error {
	ready, err := q.prepareDrafts(notices)
	if err != nil {
		return fmt.Errorf("retire %s: %w", id, err)
	}
	var spooled bool
	err = q.update(func(tx *bolt.Tx) error {
		m, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		if !m.Done() || m.RetireSeq != seq {
			return fmt.Errorf("retire %s: %w", id, ErrLeaseLost)
		}
		if m.ExportHeld && !m.RetireDue.After(q.clock()) {
			// Its lease ran out while it was held for an export, which
			// then took it, notices to send and all (see inFlight).
			return fmt.Errorf("retire %s: %w (it was exported meanwhile)", id, ErrLeaseLost)
		}
		spooled = m.Spooled
		for _, p := range ready {
			if err := putNew(tx, p.m, p.inline); err != nil {
				return err
			}
		}
		return deleteMessage(tx, m)
	})
	if err != nil {
		q.removeUnqueued(ready, nil)
		return err
	}
	if spooled {
		os.Remove(q.spoolPath(id))
	}
	return nil
}

// prepared is a draft made ready to be put in a transaction: its body read,
// and spooled if large.
type prepared struct {
	m      *Message
	inline []byte
}

func (q *Queue) prepareDrafts(drafts []Draft) ([]prepared, error) {
	var ready []prepared
	for _, d := range drafts {
		m, inline, err := q.prepare(q.NewID(), d.Envelope, bytes.NewReader(d.Body))
		if err != nil {
			q.removeUnqueued(ready, nil)
			return nil, err
		}
		ready = append(ready, prepared{m, inline})
	}
	return ready, nil
}

// removeUnqueued deletes the spool files of the prepared drafts that were
// not committed (all but those in queued).
func (q *Queue) removeUnqueued(ready, queued []prepared) {
	kept := map[string]bool{}
	for _, p := range queued {
		kept[p.m.ID] = true
	}
	for _, p := range ready {
		if p.m.Spooled && !kept[p.m.ID] {
			os.Remove(q.spoolPath(p.m.ID))
		}
	}
}
