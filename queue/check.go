package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
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
		// bbolt's Check trusts page numbers: a damaged one can end the
		// process or make the check run without end (see walkPages).
		if err := walkPages(tx, path); err != nil {
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
			if len(found) > 0 {
				// What was found already says the file is damaged; the rest
				// of the check (which may never end, on a page reached from
				// itself) cannot make it sound.
				go func() {
					for range problems {
					}
					tx.Rollback()
					db.Close()
				}()
				return true, fmt.Errorf("%s: %w (%s; the check was stopped after %s). %s", path, ErrDamaged, strings.Join(found, "; "), budget, DamagedAdvice)
			}
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

// walkPages reads, from the file and not through the memory map, every
// page of the tree tx sees: from the root bucket down, through every branch
// and every bucket, each page once. It is what bbolt's Check and every
// cursor trust without looking: that a page number is inside the file and
// reached once. A page number past the end faults on the memory map (fatal
// on bbolt's own goroutine), and a branch that leads back to itself makes
// Check recurse and a cursor descend without end. It returns the first such
// problem.
func walkPages(tx *bolt.Tx, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	pageSize := int64(tx.DB().Info().PageSize)
	read := func(id uint64, n int64) ([]byte, error) {
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, int64(id)*pageSize); err != nil {
			return nil, fmt.Errorf("page %d: %w", id, err)
		}
		return buf, nil
	}
	// The meta page of tx names the root bucket's page and the high water
	// mark: page header (16 bytes), magic, version, page size, flags (4
	// each), root bucket (root page, sequence), freelist, pgid, txid.
	var root, hwm uint64
	for _, id := range []uint64{0, 1} {
		m, err := read(id, 16+16+16+8+8+8)
		if err != nil {
			return err
		}
		if txid := binary.LittleEndian.Uint64(m[64:]); txid == uint64(tx.ID()) {
			root, hwm = binary.LittleEndian.Uint64(m[32:]), binary.LittleEndian.Uint64(m[56:])
		}
	}
	if hwm == 0 {
		return fmt.Errorf("no meta page of transaction %d", tx.ID())
	}
	seen := map[uint64]bool{}
	stack := []uint64{root}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if id < 2 || id >= hwm {
			return fmt.Errorf("page %d: out of bounds (the file has %d pages)", id, hwm)
		}
		if seen[id] {
			return fmt.Errorf("page %d: reached twice", id)
		}
		seen[id] = true
		h, err := read(id, 16) // id, flags, count, overflow
		if err != nil {
			return err
		}
		flags, count, overflow := binary.LittleEndian.Uint16(h[8:]), int64(binary.LittleEndian.Uint16(h[10:])), uint64(binary.LittleEndian.Uint32(h[12:]))
		if got := binary.LittleEndian.Uint64(h); got != id {
			return fmt.Errorf("page %d: says it is page %d", id, got)
		}
		if id+overflow >= hwm || 16+16*count > int64(overflow+1)*pageSize {
			return fmt.Errorf("page %d: %d elements in %d pages do not fit the file", id, count, overflow+1)
		}
		for o := id + 1; o <= id+overflow; o++ {
			seen[o] = true
		}
		p, err := read(id, int64(overflow+1)*pageSize)
		if err != nil {
			return err
		}
		// Keys and values are found by an offset from their element, and
		// must lie inside the page.
		inside := func(e int64, pos, length uint32) bool {
			return 16+16*e+int64(pos)+int64(length) <= int64(len(p))
		}
		switch flags {
		case 0x01: // branch elements: pos, ksize, pgid
			for e := int64(0); e < count; e++ {
				el := p[16+16*e:]
				if !inside(e, binary.LittleEndian.Uint32(el), binary.LittleEndian.Uint32(el[4:])) {
					return fmt.Errorf("page %d: key %d lies outside the page", id, e)
				}
				stack = append(stack, binary.LittleEndian.Uint64(el[8:]))
			}
		case 0x02: // leaf elements: flags, pos, ksize, vsize; a bucket's value starts with its root page
			for e := int64(0); e < count; e++ {
				el := p[16+16*e:]
				pos, ksize, vsize := binary.LittleEndian.Uint32(el[4:]), binary.LittleEndian.Uint32(el[8:]), binary.LittleEndian.Uint32(el[12:])
				if !inside(e, pos, ksize+vsize) || ksize+vsize < ksize {
					return fmt.Errorf("page %d: entry %d lies outside the page", id, e)
				}
				if binary.LittleEndian.Uint32(el)&0x01 == 0 {
					continue
				}
				if vsize < 16 {
					return fmt.Errorf("page %d: bucket %d is too short", id, e)
				}
				if child := binary.LittleEndian.Uint64(el[pos+ksize:]); child != 0 { // 0: an inline bucket
					stack = append(stack, child)
				}
			}
		default:
			return fmt.Errorf("page %d: invalid type (flags %#x)", id, flags)
		}
	}
	return nil
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
