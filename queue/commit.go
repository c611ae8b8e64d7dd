package queue

import (
	"errors"
	"fmt"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// maxGroup bounds how many writes share one transaction, so one commit's
// latency stays small under a flood.
const maxGroup = 512

type writeRequest struct {
	fn   func(tx *bolt.Tx) error
	done chan error
}

// update runs fn in a write transaction shared with whatever other writes are
// waiting, and returns once that transaction is durable (or failed).
//
// bbolt's own Batch waits up to MaxBatchDelay for company before committing;
// with 16 submitters that wait, not the disk, bounds throughput. Here a single
// committer takes everything queued while the previous fsync ran: an idle
// queue commits at once, a busy one commits in ever larger groups.
func (q *Queue) update(fn func(tx *bolt.Tx) error) error {
	req := &writeRequest{fn: fn, done: make(chan error, 1)}
	q.closeMu.RLock()
	if q.closed {
		q.closeMu.RUnlock()
		return ErrClosed
	}
	q.writes <- req
	q.closeMu.RUnlock()
	return <-req.done
}

func (q *Queue) committer() {
	defer close(q.stopped)
	// A page number that leads outside the file faults on the memory map;
	// as a panic, runGroup can turn it into ErrDamaged like any other.
	debug.SetPanicOnFault(true)
	group := make([]*writeRequest, 0, maxGroup)
	for req := range q.writes {
		group = append(group[:0], req)
	drain:
		for len(group) < maxGroup {
			select {
			case r, ok := <-q.writes:
				if !ok {
					break drain
				}
				group = append(group, r)
			default:
				break drain
			}
		}
		q.commitGroup(group)
	}
}

// errInGroup marks a failure of one request, so that the group can be
// retried without it rather than failing its neighbours.
type errInGroup struct {
	index int
	err   error
}

func (e *errInGroup) Error() string { return e.err.Error() }

func (q *Queue) commitGroup(group []*writeRequest) {
	if err := q.damaged.Load(); err != nil {
		for _, r := range group {
			r.done <- *err
		}
		return
	}
	err := q.runGroup(group)
	var one *errInGroup
	switch {
	case err == nil:
		for _, r := range group {
			r.done <- nil
		}
	case errors.As(err, &one):
		// The transaction was rolled back: the failing request gets its
		// error, every other one is run again (functions are written to be
		// re-runnable: they read what they change within the transaction).
		group[one.index].done <- one.err
		rest := append(group[:one.index:one.index], group[one.index+1:]...)
		if len(rest) > 0 {
			q.commitGroup(rest)
		}
	default:
		// The commit itself failed (disk full, I/O error): nothing of the
		// group is durable, and each submitter must hear so.
		for _, r := range group {
			r.done <- err
		}
	}
}

// runGroup runs the group in one transaction. bbolt panics on a page that
// is not what it wrote (a damaged file); here, in the committer, that would
// end the process with every submission in flight. The panic is caught
// instead (bbolt rolls the transaction back as it unwinds), and this write
// and every later one fail with ErrDamaged, so that submissions are
// answered with a temporary error and nothing more is written to the file.
func (q *Queue) runGroup(group []*writeRequest) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: %w (%v). %s", q.path, ErrDamaged, r, DamagedAdvice)
			q.damaged.Store(&err)
		}
	}()
	return q.db.Update(func(tx *bolt.Tx) error {
		for i, r := range group {
			if err := r.fn(tx); err != nil {
				return &errInGroup{i, err}
			}
		}
		return nil
	})
}

// view runs fn in a read transaction on the caller's goroutine (a delivery
// worker, an admin request), where a bbolt panic on a damaged page, or a
// fault on a page number outside the file, would end the process: both
// become ErrDamaged, as they do for writes (see runGroup).
func (q *Queue) view(fn func(tx *bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: %w (%v). %s", q.path, ErrDamaged, r, DamagedAdvice)
		}
	}()
	return q.db.View(fn)
}
