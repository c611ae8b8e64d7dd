package queue

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrDamaged means the queue database failed its consistency check, or a
// page read while using it was not what bbolt wrote. Postern does not run on
// a damaged database: see Salvage, and the operations guide.
var ErrDamaged = errors.New("queue database is damaged")

// ErrCheckTimeout means the consistency check at Open did not finish within
// Options.CheckTimeout.
var ErrCheckTimeout = errors.New("queue database check did not finish in time")

// DamagedAdvice says what to do about a damaged queue database.
const DamagedAdvice = "Postern will not run on it. Keep the file, and either restore the last backup " +
	"(postern backup) into the data directory, or salvage every readable message into a new database with " +
	"`postern queue salvage` (the damaged file is kept beside it, and what could not be read is listed); " +
	"see \"A damaged queue database\" in docs/operations.md"

// maxProblems bounds how many problems a check reports.
const maxProblems = 10

// check runs bbolt's consistency check (every page reachable exactly once,
// free or in use, of a valid type) over db. bbolt's check cannot be
// stopped, and it must not run beside writes in a read transaction, so it
// runs before any write; when budget runs out first, the check is left to
// finish (and then closes db) and the error is ErrCheckTimeout.
func check(db *bolt.DB, path string, budget time.Duration) (closed bool, err error) {
	tx, err := db.Begin(false)
	if err != nil {
		return false, fmt.Errorf("check %s: %w", path, err)
	}
	problems := make(chan error)
	go func() {
		defer close(problems)
		// bbolt's Check reads pages on a goroutine of its own, where a
		// page number past the end of the file faults on the memory map,
		// and a fault there ends the process. Every page it will read is
		// read here first, where a fault is a panic and becomes a problem.
		if err := readEveryPage(tx); err != nil {
			problems <- err
			return
		}
		for p := range tx.Check() {
			problems <- p
		}
	}()
	timer := time.NewTimer(budget)
	defer timer.Stop()
	var found []string
	for {
		select {
		case p, ok := <-problems:
			if !ok {
				tx.Rollback()
				if len(found) > 0 {
					return false, fmt.Errorf("%s: %w (%s). %s", path, ErrDamaged, strings.Join(found, "; "), DamagedAdvice)
				}
				return false, nil
			}
			if len(found) < maxProblems {
				found = append(found, p.Error())
			}
		case <-timer.C:
			go func() {
				for range problems {
				}
				tx.Rollback()
				db.Close()
			}()
			return true, fmt.Errorf("%w: %s was not checked within %s (queue.check_timeout): raise it, or set it to 0 to start without the check",
				ErrCheckTimeout, path, budget)
		}
	}
}

// readEveryPage walks every bucket of tx to its last key, on a goroutine
// that turns a fault on the memory map (a page number leading outside the
// file) into a panic, and turns a panic into an error.
func readEveryPage(tx *bolt.Tx) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading every page: %v", r)
		}
	}()
	var walk func(b *bolt.Bucket)
	walk = func(b *bolt.Bucket) {
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil {
				if child := b.Bucket(k); child != nil {
					walk(child)
				}
			}
		}
	}
	return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { walk(b); return nil })
}

// openBolt opens the database file, turning bbolt's panics on a damaged
// file (a meta or freelist page it cannot read) into ErrDamaged.
func openBolt(path string, opts *bolt.Options) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("%s: %w (%v). %s", path, ErrDamaged, r, DamagedAdvice)
		}
	}()
	return bolt.Open(path, 0o600, opts)
}
