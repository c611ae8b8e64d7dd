package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SalvageReport says what Salvage kept and what it could not read.
type SalvageReport struct {
	Messages int `json:"messages"` // messages copied into the new database
	// BodiesLost lists copied messages whose body could not be read: they
	// stay queued, and their senders' notices say the content was lost.
	BodiesLost []string `json:"bodies_lost"`
	// Lost lists messages known to have been queued (from the schedule,
	// the bodies or the spool directory) whose envelope could not be read:
	// they are gone, and their senders are not told. Their spool files, if
	// any, are kept in LostSpoolDir.
	Lost         []string `json:"lost"`
	LostSpoolDir string   `json:"lost_spool_dir,omitempty"`
	Journal      int      `json:"journal"` // journal entries (delivery evidence) copied
	// Unreadable counts the places where reading stopped at a damaged page.
	Unreadable int    `json:"unreadable"`
	Damaged    string `json:"damaged"` // where the damaged file was moved
}

// Salvage copies every message that can still be read from the damaged
// queue database at path into a new database, which then takes its place;
// the damaged file is kept beside it (path.damaged-TIME). Spool files stay
// where they are; those of messages that were lost are moved aside, out of
// reach of Recover. No daemon may have the database open.
func Salvage(path string, opts Options) (SalvageReport, error) {
	var rep SalvageReport
	if opts.SpoolDir == "" {
		opts.SpoolDir = filepath.Join(filepath.Dir(path), "spool")
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	src, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: opts.LockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return rep, fmt.Errorf("salvage %s: %w (stop postern first)", path, ErrLocked)
	}
	if err != nil {
		return rep, fmt.Errorf("salvage %s: cannot open it at all; restore the last backup: %w", path, err)
	}
	defer src.Close()
	tmp := path + ".salvage"
	os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
	if err != nil {
		return rep, fmt.Errorf("salvage into %s: %w", tmp, err)
	}
	var copied map[string]bool
	err = src.View(func(stx *bolt.Tx) error {
		return dst.Update(func(dtx *bolt.Tx) error {
			var err error
			copied, err = salvageInto(stx, dtx, opts.SpoolDir, &rep)
			return err
		})
	})
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return rep, fmt.Errorf("salvage %s: %w", path, err)
	}
	if err := moveLostSpool(opts.SpoolDir, copied, &rep); err != nil {
		return rep, fmt.Errorf("salvage %s: %w", path, err)
	}
	rep.Damaged = path + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
	// The damaged file is kept by a second name, and the new one then
	// replaces it in one rename: path names a database at every instant.
	// Were it ever missing, a daemon started then would create an empty
	// one, and its Recover would delete every spool file as unreferenced.
	if err := os.Link(path, rep.Damaged); err != nil {
		return rep, fmt.Errorf("salvage: keep the damaged file: %w", err)
	}
	if err := rename(tmp, path); err != nil {
		return rep, fmt.Errorf("salvage: put the new database in place (it is %s; the damaged one is %s): %w", tmp, rep.Damaged, err)
	}
	return rep, syncDir(filepath.Dir(path))
}

// salvageInto copies what stx can still give into dtx, and returns the IDs
// of the messages copied.
func salvageInto(stx, dtx *bolt.Tx, spoolDir string, rep *SalvageReport) (map[string]bool, error) {
	for _, b := range [][]byte{bucketMessages, bucketBodies, bucketSchedule, bucketJournal} {
		if _, err := dtx.CreateBucketIfNotExists(b); err != nil {
			return nil, err
		}
	}
	// Every ID the damaged file still mentions anywhere, so that what cannot
	// be read is at least named.
	known := map[string]bool{}
	bodies := readAll(stx, bucketBodies, rep)
	for _, kv := range bodies {
		known[string(bytes.TrimSuffix(kv.k, []byte("/prefix")))] = true
	}
	for _, kv := range readAll(stx, bucketSchedule, rep) {
		if len(kv.k) > 8 {
			known[string(kv.k[8:])] = true
		}
	}
	if entries, err := os.ReadDir(spoolDir); err == nil {
		for _, e := range entries {
			known[e.Name()] = true
		}
	}
	messages := map[string][]byte{}
	for _, kv := range readAll(stx, bucketMessages, rep) {
		messages[string(kv.k)] = kv.v
	}
	// A message whose leaf page is damaged may still be found from another
	// side of the tree.
	for id := range known {
		if _, ok := messages[id]; !ok {
			if v, ok := getSafely(stx, bucketMessages, []byte(id), rep); ok {
				messages[id] = v
			}
		}
	}
	copied := map[string]bool{}
	for id, v := range messages {
		known[id] = true
		m := new(Message)
		if err := json.Unmarshal(v, m); err != nil || m.ID != id {
			continue
		}
		returnLeases(m, time.Now())
		m.RetireDue, m.RetireSeq = time.Time{}, 0
		if err := salvageBody(stx, dtx, m, spoolDir, rep); err != nil {
			return nil, err
		}
		if err := putMessage(dtx, m, nil); err != nil {
			return nil, err
		}
		copied[id] = true
		rep.Messages++
	}
	for id := range known {
		if !copied[id] {
			rep.Lost = append(rep.Lost, id)
		}
	}
	slices.Sort(rep.Lost)
	slices.Sort(rep.BodiesLost)
	journal := dtx.Bucket(bucketJournal)
	for _, kv := range readAll(stx, bucketJournal, rep) {
		if err := journal.Put(kv.k, kv.v); err != nil {
			return nil, err
		}
		rep.Journal++
	}
	if b := safeBucket(stx, bucketJournal, rep); b != nil {
		if err := journal.SetSequence(b.Sequence()); err != nil {
			return nil, err
		}
	}
	// The record of imports (see Import) keeps a message from being
	// imported a second time: without it, importing the same export again
	// would duplicate what was delivered since.
	if imported := readAll(stx, bucketImported, rep); len(imported) > 0 {
		b, err := dtx.CreateBucketIfNotExists(bucketImported)
		if err != nil {
			return nil, err
		}
		for _, kv := range imported {
			if err := b.Put(kv.k, kv.v); err != nil {
				return nil, err
			}
		}
	}
	return copied, nil
}

func salvageBody(stx, dtx *bolt.Tx, m *Message, spoolDir string, rep *SalvageReport) error {
	if prefix, ok := getSafely(stx, bucketBodies, prefixKey(m.ID), rep); ok {
		if err := dtx.Bucket(bucketBodies).Put(prefixKey(m.ID), prefix); err != nil {
			return err
		}
	}
	if m.Spooled {
		if _, err := os.Stat(filepath.Join(spoolDir, m.ID)); err != nil {
			rep.BodiesLost = append(rep.BodiesLost, m.ID)
		}
		return nil
	}
	body, ok := getSafely(stx, bucketBodies, []byte(m.ID), rep)
	if !ok {
		rep.BodiesLost = append(rep.BodiesLost, m.ID)
		return nil
	}
	return dtx.Bucket(bucketBodies).Put([]byte(m.ID), body)
}

// rename is os.Rename; tests replace it to fail at a given step.
var rename = os.Rename

type kv struct{ k, v []byte }

// readAll reads a bucket forwards until the end or a damaged page, then
// backwards from the end until the same; it returns what it read, in no
// particular order.
func readAll(tx *bolt.Tx, name []byte, rep *SalvageReport) []kv {
	b := safeBucket(tx, name, rep)
	if b == nil {
		return nil
	}
	var out []kv
	seen := map[string]bool{}
	walk := func(first func(*bolt.Cursor) ([]byte, []byte), next func(*bolt.Cursor) ([]byte, []byte)) {
		guarded(rep, func() {
			c := b.Cursor()
			for k, v := first(c); k != nil; k, v = next(c) {
				if seen[string(k)] {
					return // met the other walk
				}
				seen[string(k)] = true
				if v != nil {
					out = append(out, kv{bytes.Clone(k), bytes.Clone(v)})
				}
			}
		})
	}
	walk((*bolt.Cursor).First, (*bolt.Cursor).Next)
	walk((*bolt.Cursor).Last, (*bolt.Cursor).Prev)
	return out
}

func safeBucket(tx *bolt.Tx, name []byte, rep *SalvageReport) (b *bolt.Bucket) {
	guarded(rep, func() { b = tx.Bucket(name) })
	return b
}

func getSafely(tx *bolt.Tx, bucket, key []byte, rep *SalvageReport) (v []byte, ok bool) {
	b := safeBucket(tx, bucket, rep)
	if b == nil {
		return nil, false
	}
	guarded(rep, func() { v = bytes.Clone(b.Get(key)) })
	return v, v != nil
}

// guarded runs read, counting a damaged page (a bbolt panic, or a fault on
// a page pointer that leads outside the file) rather than dying of it.
func guarded(rep *SalvageReport, read func()) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			rep.Unreadable++
		}
	}()
	read()
}

// moveLostSpool moves the spool files no salvaged message owns into a
// directory of their own, where Recover will not delete them.
func moveLostSpool(spoolDir string, copied map[string]bool, rep *SalvageReport) error {
	entries, err := os.ReadDir(spoolDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		if copied[e.Name()] {
			continue
		}
		if rep.LostSpoolDir == "" {
			rep.LostSpoolDir = filepath.Join(filepath.Dir(spoolDir), "spool.lost-"+time.Now().UTC().Format("20060102T150405Z"))
			if err := os.MkdirAll(rep.LostSpoolDir, 0o700); err != nil {
				return err
			}
		}
		if err := os.Rename(filepath.Join(spoolDir, e.Name()), filepath.Join(rep.LostSpoolDir, e.Name())); err != nil {
			return err
		}
	}
	if rep.LostSpoolDir != "" {
		return errors.Join(syncDir(spoolDir), syncDir(rep.LostSpoolDir))
	}
	return nil
}
