package queue

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A queue export moves the messages of a node being retired to another
// node, when draining it is not possible. An export is a directory:
//
//	manifest.json        what the export holds (ExportManifest)
//	SHA256SUMS           the SHA-256 of every other file (sha256sum -c reads it)
//	messages/ID.json     a message's envelope and every recipient's state
//	messages/ID.eml      its body, byte for byte as it would be sent
//
// Neither side can lose a message, whenever either stops:
//
//   - Export marks the messages ExportHeld (not scheduled here, so not
//     delivered both here and there), waits for the attempts in flight,
//     writes and fsyncs every file, and only then lets the caller publish
//     the directory under its final name (Publish). With Remove, the
//     messages are deleted from this queue after that, each only if it did
//     not change since it was written. A crash before Publish leaves the
//     messages here (marked: a new export takes them again, and Release
//     gives one back to delivery); after it, the export is complete.
//   - Import verifies every checksum before it imports anything, and
//     records the import of each message (its ID in the exporting queue) in
//     the same transaction as the message itself. Importing an export twice,
//     or again after a crash, or a second export of the same messages, adds
//     each message once.

// ExportFormat names the layout of an export; Import refuses another.
const ExportFormat = "postern-queue-export/1"

// ExportManifest is manifest.json.
type ExportManifest struct {
	Format   string    `json:"format"`
	ExportID string    `json:"export_id"`
	Source   string    `json:"source,omitempty"` // the exporting node (its hostname)
	Created  time.Time `json:"created"`
	// Removed: the exporting queue deletes the messages once the export is
	// published (ExportOptions.Remove), so the export is their only copy.
	Removed  bool          `json:"removed,omitempty"`
	Messages []ExportEntry `json:"messages"`
}

// ExportEntry is one message of an export, with its files' checksums.
type ExportEntry struct {
	ID             string `json:"id"`
	Size           int64  `json:"size"`
	EnvelopeSHA256 string `json:"envelope_sha256"`
	BodySHA256     string `json:"body_sha256"`
}

// exportedMessage is messages/ID.json: what the exporting queue knew of
// the message, without its own lease bookkeeping. Leases do not travel: a
// recipient leased when the export was written (only one whose lease had
// run out, or left by a process that is gone) is pending, due at once.
type exportedMessage struct {
	ID string `json:"id"`
	Envelope
	Size int64 `json:"size"`
	Held bool  `json:"held,omitempty"`
	// Imports is how many times the message was imported before this
	// export (Message.Imports).
	Imports int `json:"imports,omitempty"`
}

// ExportOptions direct Export.
type ExportOptions struct {
	// Publish gives the complete, fsynced export its final name, durably.
	// Nothing is removed from the queue before it returns nil.
	Publish func() error
	// Remove deletes the exported messages from this queue once published.
	Remove bool
	// Wait bounds how long Export waits for delivery attempts in flight.
	Wait time.Duration
	// LeasesVoid: no daemon has the queue open (the caller holds the
	// database), so leases left in it are of a process that is gone.
	LeasesVoid bool
	// Source names this node in the manifest.
	Source string

	// crash, when it says yes at a step, makes Export return at once
	// without undoing anything, as a process killed there would.
	crash func(step string) bool
	// waiting is told each time Export finds attempts still in flight.
	waiting func(inFlight []string)
}

// ExportReport says what Export did.
type ExportReport struct {
	ExportID string `json:"export_id"`
	Messages int    `json:"messages"` // written to the export
	Spooled  int    `json:"spooled"`  // of them stored as spool files here
	Bytes    int64  `json:"bytes"`    // their bodies' sizes
	Removed  int    `json:"removed"`  // deleted from this queue (Remove)
	// Changed lists exported messages changed here after they were written
	// (an operator's action): kept here, still held for the export.
	Changed []string `json:"changed,omitempty"`
	// Released lists exported messages given back to delivery here after
	// they were written (queue release during the export): they are in
	// the export too, and both nodes will deliver them unless one of the
	// copies is deleted.
	Released []string `json:"released,omitempty"`
	// BodyGone lists messages left out because their body is lost: they
	// stay here and are given back to delivery, which tells their senders.
	BodyGone []string `json:"body_gone,omitempty"`
}

// ErrExportRunning: another export of the queue has not ended yet.
var ErrExportRunning = errors.New("another export of this queue is running: wait for it to end")

// errExportCrash is what a simulated crash returns (tests only).
var errExportCrash = errors.New("simulated crash")

// Export writes every queued message into dir (held open by the caller, who
// has made sure nobody else can write in it; files are created with O_EXCL
// and never through a symbolic link) and calls opts.Publish. Messages with a
// delivery attempt in flight are waited for up to opts.Wait; if any is still
// in flight then, nothing is exported, the marks are undone, and the error
// is ErrInFlight naming them. On any other error before Publish, the marks
// are undone, and what was written in dir is the caller's to remove.
func (q *Queue) Export(dir *os.Root, opts ExportOptions) (rep ExportReport, err error) {
	rep.ExportID = newExportID()
	if !q.exporting.TryLock() {
		return rep, fmt.Errorf("export: %w", ErrExportRunning)
	}
	defer q.exporting.Unlock()
	crash := func(step string) bool { return opts.crash != nil && opts.crash(step) }
	ids, marked, err := q.markExport()
	if err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	published := false
	defer func() {
		// Only the messages this export marked go back to delivery: one
		// held already is in an earlier export, which may be imported.
		if err != nil && !published && !errors.Is(err, errExportCrash) {
			if uerr := q.unmarkExport(marked); uerr != nil {
				err = fmt.Errorf("%w (and giving the messages back to delivery: %v)", err, uerr)
			}
		}
	}()
	if crash("marked") {
		return rep, errExportCrash
	}
	if busy, err := q.waitIdle(ids, opts); err != nil {
		return rep, err
	} else if len(busy) > 0 {
		return rep, fmt.Errorf("export: %d messages still have a delivery attempt in flight after %s (%s): %w; "+
			"nothing was exported: try again, with a longer --wait (a lease that outlives its deadline is of an attempt "+
			"still running, or of one whose outcome could not be written: that one ends when postern restarts)", len(busy), opts.Wait, strings.Join(firstOf(busy, 10), " "), ErrInFlight)
	}
	man := ExportManifest{Format: ExportFormat, ExportID: rep.ExportID, Source: opts.Source, Created: q.clock().UTC(), Removed: opts.Remove}
	stored, err := q.writeExport(dir, ids, opts.LeasesVoid, &man, &rep)
	if err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	if crash("written") {
		return rep, errExportCrash
	}
	if err := writeManifest(dir, &man); err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	if crash("manifest") {
		return rep, errExportCrash
	}
	if opts.Publish != nil {
		if err := opts.Publish(); err != nil {
			return rep, fmt.Errorf("export: %w", err)
		}
	}
	published = true
	if crash("published") {
		return rep, errExportCrash
	}
	// Messages not in the export go back to delivery: here is the only
	// place they can still be delivered or returned.
	if err := q.unmarkExport(rep.BodyGone); err != nil {
		return rep, fmt.Errorf("export: give the messages without a body back to delivery: %w", err)
	}
	if !opts.Remove {
		rep.Released, err = q.releasedSince(stored)
		if err != nil {
			return rep, fmt.Errorf("export complete, but checking that its messages are still held here: %w", err)
		}
		return rep, nil
	}
	if err := q.removeExported(stored, &rep, crash); err != nil {
		return rep, fmt.Errorf("export complete, but removing the exported messages from this queue: %w", err)
	}
	return rep, nil
}

func newExportID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

func firstOf(s []string, n int) []string {
	if len(s) > n {
		return append(slices.Clone(s[:n]), "…")
	}
	return s
}

// markExport marks every message ExportHeld, so that no new attempt
// starts, and returns their IDs, and those of them it marked (not held for
// an earlier export already).
func (q *Queue) markExport() (ids, marked []string, err error) {
	err = q.update(func(tx *bolt.Tx) error {
		ids, marked = ids[:0], marked[:0]
		var changed, olds []*Message
		err := tx.Bucket(bucketMessages).ForEach(func(k, v []byte) error {
			old := new(Message)
			if err := json.Unmarshal(v, old); err != nil {
				return fmt.Errorf("decode message %s: %w", k, err)
			}
			ids = append(ids, old.ID)
			if !old.ExportHeld {
				m := old.clone()
				m.ExportHeld = true
				changed, olds = append(changed, &m), append(olds, old)
				marked = append(marked, old.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for i, m := range changed { // after the walk: bbolt forbids writes during it
			if err := putMessage(tx, m, olds[i]); err != nil {
				return err
			}
		}
		return nil
	})
	return ids, marked, err
}

// unmarkExport gives messages held for an export back to delivery.
func (q *Queue) unmarkExport(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	return q.update(func(tx *bolt.Tx) error {
		for _, id := range ids {
			old, err := getMessage(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if !old.ExportHeld {
				continue
			}
			m := old.clone()
			m.ExportHeld = false
			if err := putMessage(tx, &m, old); err != nil {
				return err
			}
		}
		return nil
	})
}

// inFlight reports whether a worker may still be acting on m: a recipient
// leased, or the message's retirement leased until a deadline not yet
// passed. A recipient's lease counts whatever its deadline: its worker in
// the running daemon may be late (a stalled renewal, a step of the wall
// clock) and still renew it, since nobody is granted it again while the
// message is held for the export, and a delivery it reports late is kept
// (Record): exported as pending, the recipient would be sent twice. Every
// attempt ends with an outcome, even one cut off, so the wait ends; a lease
// whose worker is really gone lasts until the daemon restarts (Recover),
// or is void when the export runs with the daemon stopped (LeasesVoid).
func inFlight(m *Message, now time.Time) bool {
	if m.Done() && m.RetireSeq != 0 && m.RetireDue.After(now) {
		return true
	}
	for _, r := range m.Recipients {
		if r.State == Leased {
			return true
		}
	}
	return false
}

// waitIdle waits until no message of ids has an attempt in flight, or
// opts.Wait has passed, and returns those still busy then.
func (q *Queue) waitIdle(ids []string, opts ExportOptions) ([]string, error) {
	if opts.LeasesVoid {
		return nil, nil
	}
	deadline := time.Now().Add(opts.Wait)
	for {
		var busy []string
		err := q.view(func(tx *bolt.Tx) error {
			now := q.clock()
			for _, id := range ids {
				m, err := getMessage(tx, id)
				if errors.Is(err, ErrNotFound) {
					continue // retired meanwhile
				}
				if err != nil {
					return err
				}
				if inFlight(m, now) {
					busy = append(busy, id)
				}
			}
			return nil
		})
		if err != nil || len(busy) == 0 || !time.Now().Before(deadline) {
			return busy, err
		}
		if opts.waiting != nil {
			opts.waiting(busy)
		}
		time.Sleep(min(100*time.Millisecond, time.Until(deadline)))
	}
}

// writeExport writes each message held for the export, and returns the
// stored record of each as written (to remove it later only if unchanged).
func (q *Queue) writeExport(dir *os.Root, ids []string, leasesVoid bool, man *ExportManifest, rep *ExportReport) (map[string][]byte, error) {
	if err := dir.Mkdir("messages", 0o700); err != nil {
		return nil, err
	}
	stored := map[string][]byte{}
	err := q.view(func(tx *bolt.Tx) error {
		now := q.clock()
		for _, id := range ids {
			v := tx.Bucket(bucketMessages).Get([]byte(id))
			if v == nil {
				continue // retired or deleted meanwhile
			}
			m := new(Message)
			if err := json.Unmarshal(v, m); err != nil {
				return fmt.Errorf("decode message %s: %w", id, err)
			}
			if !m.ExportHeld {
				continue // released meanwhile
			}
			if q.bodyGone(tx, m) {
				rep.BodyGone = append(rep.BodyGone, id)
				continue
			}
			e, err := q.exportOne(tx, dir, m, now)
			if errors.Is(err, os.ErrNotExist) && m.Spooled {
				rep.BodyGone = append(rep.BodyGone, id)
				continue
			}
			if err != nil {
				return fmt.Errorf("message %s: %w", id, err)
			}
			man.Messages = append(man.Messages, e)
			stored[id] = bytes.Clone(v)
			rep.Messages++
			rep.Bytes += m.Size
			if m.Spooled {
				rep.Spooled++
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The files' entries are durable before the manifest names them.
	return stored, SyncIn(dir, "messages")
}

// exportOne writes m's two files and returns its manifest entry.
func (q *Queue) exportOne(tx *bolt.Tx, dir *os.Root, m *Message, now time.Time) (ExportEntry, error) {
	e := ExportEntry{ID: m.ID, Size: m.Size}
	x := exportedMessage{ID: m.ID, Envelope: m.Envelope, Size: m.Size, Held: m.Held, Imports: m.Imports}
	x.Recipients = slices.Clone(m.Recipients)
	for i := range x.Recipients {
		r := &x.Recipients[i]
		if r.State == Leased {
			// Past its deadline (see inFlight), or left by a process that
			// is gone: the attempt is over, as Recover would say.
			r.State, r.Due = Pending, now
		}
		r.Lease = 0
	}
	env, err := json.MarshalIndent(&x, "", "  ")
	if err != nil {
		return e, err
	}
	e.EnvelopeSHA256 = sha256Hex(env)
	body, err := q.bodyIn(tx, m)
	if err != nil {
		return e, err
	}
	defer body.Close()
	h := sha256.New()
	var n int64
	err = CreateSynced(dir, path.Join("messages", m.ID+".eml"), func(w io.Writer) error {
		var err error
		n, err = io.Copy(io.MultiWriter(w, h), body)
		return err
	})
	if err != nil {
		return e, err
	}
	if n != m.Size {
		return e, fmt.Errorf("body is %d bytes, the envelope says %d", n, m.Size)
	}
	e.BodySHA256 = hex.EncodeToString(h.Sum(nil))
	err = CreateSynced(dir, path.Join("messages", m.ID+".json"), func(w io.Writer) error { _, err := w.Write(env); return err })
	return e, err
}

// bodyIn opens m's whole body (a seal first, if it has one) within tx.
func (q *Queue) bodyIn(tx *bolt.Tx, m *Message) (io.ReadCloser, error) {
	b := tx.Bucket(bucketBodies)
	if !m.Spooled {
		return io.NopCloser(bytes.NewReader(b.Get([]byte(m.ID)))), nil
	}
	f, err := os.Open(q.spoolPath(m.ID))
	if err != nil {
		return nil, err
	}
	prefix := b.Get(prefixKey(m.ID))
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(prefix), f), f}, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeManifest writes manifest.json, then SHA256SUMS over every file,
// and makes their entries durable: a published export is complete.
func writeManifest(dir *os.Root, man *ExportManifest) error {
	if man.Messages == nil {
		man.Messages = []ExportEntry{}
	}
	data, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return err
	}
	if err := CreateSynced(dir, "manifest.json", func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return err
	}
	var sums strings.Builder
	fmt.Fprintf(&sums, "%s  manifest.json\n", sha256Hex(data))
	for _, e := range man.Messages {
		fmt.Fprintf(&sums, "%s  messages/%s.json\n", e.EnvelopeSHA256, e.ID)
		fmt.Fprintf(&sums, "%s  messages/%s.eml\n", e.BodySHA256, e.ID)
	}
	if err := CreateSynced(dir, "SHA256SUMS", func(w io.Writer) error { _, err := io.WriteString(w, sums.String()); return err }); err != nil {
		return err
	}
	return SyncIn(dir, ".")
}

// removeExported deletes from this queue the exported messages that did
// not change since they were written, in one transaction.
func (q *Queue) removeExported(stored map[string][]byte, rep *ExportReport, crash func(string) bool) error {
	var spooled []string
	ids := slices.Sorted(func(yield func(string) bool) {
		for id := range stored {
			if !yield(id) {
				return
			}
		}
	})
	err := q.update(func(tx *bolt.Tx) error {
		spooled, rep.Changed, rep.Released, rep.Removed = spooled[:0], nil, nil, 0
		for _, id := range ids {
			v := tx.Bucket(bucketMessages).Get([]byte(id))
			if v == nil {
				continue
			}
			m, err := getMessage(tx, id)
			if err != nil {
				return err
			}
			if !m.ExportHeld {
				rep.Released = append(rep.Released, id)
				continue
			}
			if !bytes.Equal(v, stored[id]) {
				rep.Changed = append(rep.Changed, id)
				continue
			}
			if err := deleteMessage(tx, m); err != nil {
				return err
			}
			if m.Spooled {
				spooled = append(spooled, id)
			}
			rep.Removed++
		}
		return nil
	})
	if err != nil {
		return err
	}
	if crash("removed") {
		return errExportCrash // spool files left: Recover removes them
	}
	for _, id := range spooled {
		os.Remove(q.spoolPath(id))
	}
	return nil
}

// releasedSince lists the exported messages no longer held for the export
// here (given back to delivery since they were written).
func (q *Queue) releasedSince(stored map[string][]byte) ([]string, error) {
	var released []string
	err := q.view(func(tx *bolt.Tx) error {
		released = released[:0]
		for id := range stored {
			m, err := getMessage(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if !m.ExportHeld {
				released = append(released, id)
			}
		}
		return nil
	})
	slices.Sort(released)
	return released, err
}
