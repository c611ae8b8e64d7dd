package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
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

// check runs the consistency check of walkPages (every page reachable
// exactly once, free or in use, of a valid type, keys in order) over db, from
// the file rather than through the memory map. It runs before any write, on
// the transaction Open sees; when budget runs out first, the check is left
// to finish (and then closes db) and the error is ErrCheckTimeout.
func check(db *bolt.DB, path string, budget time.Duration) (closed bool, err error) {
	tx, err := db.Begin(false)
	if err != nil {
		return false, fmt.Errorf("check %s: %w", path, err)
	}
	problems := make(chan error)
	go func() {
		defer close(problems)
		if err := walkPages(tx, path, func(p error) { problems <- p }); err != nil {
			problems <- err
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
// page of the tree tx sees, and proves what bbolt's Check proves: every page
// below the high water mark is either reached from the root exactly once or
// on the freelist, never both, and no free page is listed twice; every page
// reached is a branch or a leaf whose elements, keys and values lie inside
// it, with keys in order, each between the keys of its parent that lead to
// it, and so is the page an inline bucket keeps in its value (bbolt's Check
// opens every bucket, and refuses one with no room for it); every page
// number is inside the file. It reports each problem to
// report (up to maxProblems; a page found damaged is not descended into).
//
// It replaces bbolt's Check, which reads the same pages through the memory
// map: every page it touches, every message body included, then counts in
// the daemon's resident memory for as long as it runs (434 MB with 100,000
// messages queued), where a read from the file leaves them in the page
// cache, shared and reclaimable. Check also trusts page numbers: one past
// the end faults on the memory map (fatal on bbolt's own goroutine), and a
// branch that leads back to itself makes it recurse without end.
func walkPages(tx *bolt.Tx, path string, report func(error)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &walker{f: f, pageSize: int64(tx.DB().Info().PageSize), report: report}
	root, freelist, err := w.meta(tx)
	if err != nil {
		return err
	}
	// bbolt writes every page below the mark before the meta page that
	// names it, so the file holds them all; a mark past its end (a meta
	// page whose checksum holds all the same) must not size the page sets
	// below, which would ask for memory for pages that are not there.
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if pages := uint64(st.Size() / w.pageSize); w.hwm > pages {
		return fmt.Errorf("the meta page claims %d pages, and the file holds %d", w.hwm, pages)
	}
	w.reached, w.freed = newPageSet(w.hwm), newPageSet(w.hwm)
	w.reached.add(0)
	w.reached.add(1)
	if freelist != noFreelist {
		w.readFreelist(freelist)
	}
	w.walk(root)
	for id := uint64(0); id < w.hwm && !w.full(); id++ {
		if !w.reached.has(id) && !w.freed.has(id) {
			w.problem(fmt.Errorf("page %d: unreachable unfreed", id))
		}
	}
	return nil
}

// meta finds the meta page of tx as bbolt chose it, and returns the root
// bucket's page and the freelist's, and sets the high water mark. A meta
// page counts only if it validates as bbolt's does (magic, version, and the
// FNV-64a checksum of its fields) and names tx's root page and size: a
// damaged meta page may claim tx's txid (one flipped bit does it), and a
// check that walked its tree would prove nothing about the pages bbolt
// reads. The layout: page header (16 bytes), magic, version, page size,
// flags (4 each), root bucket (root page, sequence), freelist, pgid, txid,
// checksum (8 each).
func (w *walker) meta(tx *bolt.Tx) (root, freelist uint64, err error) {
	wantRoot := uint64(tx.Cursor().Bucket().Root())
	for _, id := range []uint64{0, 1} {
		m, err := w.read(id, 16+64)
		if err != nil {
			return 0, 0, err
		}
		sum := fnv.New64a()
		sum.Write(m[16:72])
		switch {
		case binary.LittleEndian.Uint32(m[16:]) != 0xED0CDAED, binary.LittleEndian.Uint32(m[20:]) != 2,
			binary.LittleEndian.Uint64(m[72:]) != sum.Sum64():
			continue // not valid: bbolt does not use it either
		case binary.LittleEndian.Uint64(m[64:]) != uint64(tx.ID()), binary.LittleEndian.Uint64(m[32:]) != wantRoot,
			int64(binary.LittleEndian.Uint64(m[56:]))*w.pageSize != tx.Size():
			continue // another transaction's
		}
		w.hwm = binary.LittleEndian.Uint64(m[56:])
		return wantRoot, binary.LittleEndian.Uint64(m[48:]), nil
	}
	return 0, 0, fmt.Errorf("no valid meta page of transaction %d (root page %d, %d bytes)", tx.ID(), wantRoot, tx.Size())
}

// noFreelist is the freelist page number of a database that does not keep
// its freelist on disk (bbolt's NoFreelistSync).
const noFreelist = ^uint64(0)

type walker struct {
	f        *os.File
	pageSize int64
	hwm      uint64
	reached  pageSet
	freed    pageSet
	report   func(error)
	problems int
	buf      []byte
}

func (w *walker) problem(err error) {
	w.problems++
	w.report(err)
}

func (w *walker) full() bool { return w.problems >= maxProblems }

// read returns n bytes from the start of page id, in a buffer reused by
// the next read.
func (w *walker) read(id uint64, n int64) ([]byte, error) {
	if int64(cap(w.buf)) < n {
		w.buf = make([]byte, n)
	}
	buf := w.buf[:n]
	if _, err := w.f.ReadAt(buf, int64(id)*w.pageSize); err != nil {
		return nil, fmt.Errorf("page %d: %w", id, err)
	}
	return buf, nil
}

// header reads page id's header (id, flags, count, overflow) and checks
// that the page, with its overflow, lies inside the file.
func (w *walker) header(id uint64) (flags uint16, count int64, overflow uint64, err error) {
	if id < 2 || id >= w.hwm {
		return 0, 0, 0, fmt.Errorf("page %d: out of bounds (the file has %d pages)", id, w.hwm)
	}
	h, err := w.read(id, 16)
	if err != nil {
		return 0, 0, 0, err
	}
	flags, count, overflow = binary.LittleEndian.Uint16(h[8:]), int64(binary.LittleEndian.Uint16(h[10:])), uint64(binary.LittleEndian.Uint32(h[12:]))
	if got := binary.LittleEndian.Uint64(h); got != id {
		return 0, 0, 0, fmt.Errorf("page %d: says it is page %d", id, got)
	}
	if id+overflow >= w.hwm {
		return 0, 0, 0, fmt.Errorf("page %d: its %d overflow pages run past the end of the file (%d pages)", id, overflow, w.hwm)
	}
	return flags, count, overflow, nil
}

// readFreelist marks the free pages the freelist page lists, and the
// freelist's own pages as reached.
func (w *walker) readFreelist(id uint64) {
	flags, count, overflow, err := w.header(id)
	if err == nil && flags != 0x10 {
		err = fmt.Errorf("page %d: the freelist is not a freelist page (flags %#x)", id, flags)
	}
	if err != nil {
		w.problem(err)
		return
	}
	for o := id; o <= id+overflow; o++ {
		w.reached.add(o)
	}
	p, err := w.read(id, int64(overflow+1)*w.pageSize)
	if err != nil {
		w.problem(err)
		return
	}
	ids := p[16:]
	n := uint64(count)
	if count == 0xFFFF { // the count does not fit the header: it is the first element
		n, ids = binary.LittleEndian.Uint64(ids), ids[8:]
	}
	if n > uint64(len(ids))/8 {
		w.problem(fmt.Errorf("page %d: a freelist of %d pages does not fit in %d pages", id, n, overflow+1))
		return
	}
	for i := uint64(0); i < n && !w.full(); i++ {
		free := binary.LittleEndian.Uint64(ids[8*i:])
		switch {
		case free < 2 || free >= w.hwm:
			w.problem(fmt.Errorf("page %d: freed, but out of bounds (the file has %d pages)", free, w.hwm))
		case w.freed.has(free):
			w.problem(fmt.Errorf("page %d: already freed", free))
		case w.reached.has(free):
			w.problem(fmt.Errorf("page %d: the freelist lists itself as free", free))
		default:
			w.freed.add(free)
		}
	}
}

// pending is a page still to walk, with the keys its parent allows it:
// from min (inclusive, nil: no bound) to max (exclusive, nil: no bound).
type pending struct {
	id       uint64
	min, max []byte
}

// walk visits the tree of pages from root, and the trees of the buckets in
// it, depth first, without recursion (a damaged file may be deep).
func (w *walker) walk(root uint64) {
	stack := []pending{{id: root}}
	for len(stack) > 0 && !w.full() {
		at := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		children, err := w.visit(at)
		if err != nil {
			w.problem(err)
			continue
		}
		stack = append(stack, children...)
	}
}

// visit checks one page and returns the pages it leads to.
func (w *walker) visit(at pending) ([]pending, error) {
	id := at.id
	flags, count, overflow, err := w.header(id)
	if err != nil {
		return nil, err
	}
	for o := id; o <= id+overflow; o++ {
		if w.reached.has(o) {
			return nil, fmt.Errorf("page %d: reached twice", o)
		}
		if w.freed.has(o) {
			return nil, fmt.Errorf("page %d: reachable freed", o)
		}
	}
	for o := id; o <= id+overflow; o++ {
		w.reached.add(o)
	}
	if flags != 0x01 && flags != 0x02 {
		return nil, fmt.Errorf("page %d: invalid type (flags %#x)", id, flags)
	}
	if 16+16*count > int64(overflow+1)*w.pageSize {
		return nil, fmt.Errorf("page %d: %d elements in %d pages do not fit the file", id, count, overflow+1)
	}
	p, err := w.read(id, int64(overflow+1)*w.pageSize)
	if err != nil {
		return nil, err
	}
	// Keys and values are found by an offset from their element, and
	// must lie inside the page.
	inside := func(e int64, pos, length uint32) bool {
		return 16+16*e+int64(pos)+int64(length) <= int64(len(p))
	}
	var children []pending
	var prev []byte
	for e := int64(0); e < count; e++ {
		el := p[16+16*e:]
		var key []byte
		if flags == 0x01 { // branch elements: pos, ksize, pgid
			pos, ksize := binary.LittleEndian.Uint32(el), binary.LittleEndian.Uint32(el[4:])
			if !inside(e, pos, ksize) {
				return nil, fmt.Errorf("page %d: key %d lies outside the page", id, e)
			}
			key = el[pos:][:ksize]
		} else { // leaf elements: flags, pos, ksize, vsize
			pos, ksize, vsize := binary.LittleEndian.Uint32(el[4:]), binary.LittleEndian.Uint32(el[8:]), binary.LittleEndian.Uint32(el[12:])
			if !inside(e, pos, ksize+vsize) || ksize+vsize < ksize {
				return nil, fmt.Errorf("page %d: entry %d lies outside the page", id, e)
			}
			key = el[pos:][:ksize]
			if binary.LittleEndian.Uint32(el)&0x01 != 0 { // a bucket: its value starts with its root page
				if vsize < 16 {
					return nil, fmt.Errorf("page %d: bucket %d is too short", id, e)
				}
				value := el[pos+ksize:][:vsize]
				if child := binary.LittleEndian.Uint64(value); child != 0 {
					children = append(children, pending{id: child})
				} else if err := inlineBucket(value[16:]); err != nil { // 0: an inline bucket, its page in value
					return nil, fmt.Errorf("page %d: inline bucket %d: %w", id, e, err)
				}
			}
		}
		if err := keyInOrder(key, prev, at, e); err != nil {
			return nil, fmt.Errorf("page %d: %w", id, err)
		}
		prev = bytes.Clone(key) // the buffer is reused by the next read
		if flags == 0x01 {
			children = append(children, pending{id: binary.LittleEndian.Uint64(el[8:]), min: prev})
		}
	}
	if flags == 0x01 {
		// A branch's child holds the keys from its own key up to the next
		// child's (the last one: up to what the branch itself may hold).
		for i := range children {
			if i+1 < len(children) {
				children[i].max = children[i+1].min
			} else {
				children[i].max = at.max
			}
		}
	}
	return children, nil
}

// inlineBucket checks the page of an inline bucket, which its value holds
// after the bucket header: bbolt reads it in place, as it would a leaf, so
// its elements, keys and values must lie inside it, and its keys be in
// order. bbolt inlines only a bucket that holds no bucket.
func inlineBucket(p []byte) error {
	if len(p) < 16 {
		return fmt.Errorf("no room for its page (%d bytes)", len(p))
	}
	flags, count := binary.LittleEndian.Uint16(p[8:]), int64(binary.LittleEndian.Uint16(p[10:]))
	if flags != 0x02 {
		return fmt.Errorf("its page is not a leaf (flags %#x)", flags)
	}
	if 16+16*count > int64(len(p)) {
		return fmt.Errorf("%d elements do not fit in its %d bytes", count, len(p))
	}
	var prev []byte
	for e := int64(0); e < count; e++ {
		el := p[16+16*e:]
		elFlags, pos, ksize, vsize := binary.LittleEndian.Uint32(el), binary.LittleEndian.Uint32(el[4:]), binary.LittleEndian.Uint32(el[8:]), binary.LittleEndian.Uint32(el[12:])
		if 16+16*e+int64(pos)+int64(ksize)+int64(vsize) > int64(len(p)) {
			return fmt.Errorf("entry %d lies outside its page", e)
		}
		if elFlags&0x01 != 0 {
			return fmt.Errorf("entry %d is a bucket", e)
		}
		key := el[pos:][:ksize]
		if e > 0 && bytes.Compare(prev, key) >= 0 {
			return fmt.Errorf("key %d (%x) is not after the key before it (%x)", e, key, prev)
		}
		prev = key
	}
	return nil
}

// keyInOrder checks the key of element e against the one before it on the
// page (prev) and the bounds the page's parent gives it.
func keyInOrder(key, prev []byte, at pending, e int64) error {
	if e > 0 && bytes.Compare(prev, key) >= 0 {
		return fmt.Errorf("key %d (%x) is not after the key before it (%x)", e, key, prev)
	}
	if e == 0 && at.min != nil && bytes.Compare(key, at.min) < 0 {
		return fmt.Errorf("key %d (%x) is before the key that leads to the page (%x)", e, key, at.min)
	}
	if at.max != nil && bytes.Compare(key, at.max) >= 0 {
		return fmt.Errorf("key %d (%x) is not before the key of the next page (%x)", e, key, at.max)
	}
	return nil
}

// pageSet is a set of page numbers below a high water mark.
type pageSet []uint64

func newPageSet(hwm uint64) pageSet  { return make(pageSet, (hwm+63)/64) }
func (s pageSet) add(id uint64)      { s[id/64] |= 1 << (id % 64) }
func (s pageSet) has(id uint64) bool { return s[id/64]&(1<<(id%64)) != 0 }

// openBolt opens the database file, turning bbolt's panics on a damaged
// file (a meta or freelist page it cannot read) into ErrDamaged.
func openBolt(path string, opts *bolt.Options) (db *bolt.DB, err error) {
	// Read only (Salvage), bbolt does not read the freelist: a damaged one
	// must not stop a salvage.
	if !opts.ReadOnly {
		if err := freelistFits(path); err != nil {
			return nil, fmt.Errorf("%s: %w (%v). %s", path, ErrDamaged, err, DamagedAdvice)
		}
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("%s: %w (%v). %s", path, ErrDamaged, r, DamagedAdvice)
		}
	}()
	return bolt.Open(path, 0o600, opts)
}

// freelistFits checks, before bbolt reads it, that the freelist the meta
// page bbolt uses names lies inside the file and lists no more pages than its
// own pages hold. bbolt's Open copies the freelist as its count says: a
// count of 2^32 asks for 32 GiB, and the runtime ends the process on it
// (no recover catches that). A file too short for a meta page, or without
// a valid one, is left to bbolt, which creates or refuses it.
func freelistFits(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // created by bbolt
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	meta := func(at int64) (m []byte, ok bool) {
		m = make([]byte, 80)
		if _, err := f.ReadAt(m, at); err != nil {
			return nil, false
		}
		sum := fnv.New64a()
		sum.Write(m[16:72])
		return m, binary.LittleEndian.Uint32(m[16:]) == 0xED0CDAED && binary.LittleEndian.Uint64(m[72:]) == sum.Sum64()
	}
	var metas [][]byte
	var pageSize int64
	if m, ok := meta(0); ok {
		metas, pageSize = append(metas, m), int64(binary.LittleEndian.Uint32(m[24:]))
	}
	for _, ps := range []int64{pageSize, int64(os.Getpagesize()), 4096, 8192, 16384, 32768, 65536} {
		if m, ok := meta(ps); ps > 0 && ok && int64(binary.LittleEndian.Uint32(m[24:])) == ps {
			metas = append(metas, m)
			break
		}
	}
	// bbolt reads the freelist of one meta only: the valid one with the
	// higher transaction id. The other's freelist page may have been
	// reused since (it is free once no transaction reads that meta), so
	// its header is anything: checking it refused a sound file after a
	// crash more often than not.
	if len(metas) == 2 && binary.LittleEndian.Uint64(metas[1][64:]) > binary.LittleEndian.Uint64(metas[0][64:]) {
		metas = metas[1:]
	} else if len(metas) == 2 {
		metas = metas[:1]
	}
	for _, m := range metas {
		ps := int64(binary.LittleEndian.Uint32(m[24:]))
		id := binary.LittleEndian.Uint64(m[48:])
		if id == noFreelist || ps <= 0 {
			continue
		}
		if id >= uint64(size/ps) {
			return fmt.Errorf("freelist page %d lies past the end of the file (%d pages)", id, size/ps)
		}
		h := make([]byte, 24)
		if _, err := f.ReadAt(h, int64(id)*ps); err != nil {
			return fmt.Errorf("freelist page %d: %w", id, err)
		}
		count, overflow := uint64(binary.LittleEndian.Uint16(h[10:])), uint64(binary.LittleEndian.Uint32(h[12:]))
		room := (overflow+1)*uint64(ps) - 16
		if count == 0xFFFF {
			count, room = binary.LittleEndian.Uint64(h[16:]), room-8
		}
		if id+overflow >= uint64(size/ps) || count > room/8 {
			return fmt.Errorf("freelist page %d: %d free pages do not fit in its %d pages, or the file", id, count, overflow+1)
		}
	}
	return nil
}
