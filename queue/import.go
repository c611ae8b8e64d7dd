package queue

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketImported records each message imported from an export, by its ID
// in the exporting queue and the number of imports it went through before
// (importKey), so that it is never imported twice. Not the export or the
// envelope: a second export of the same message (after attempts changed
// its recipients) must be recognised too, and IDs of different nodes
// differ unless 48 random bits agree (NewID). The count tells that apart
// from a message that moved away and comes back (A to B, back to A, and
// to B again), which must be imported. An entry is about 150 bytes and is
// kept for good: a message imported and since delivered must still be
// recognised when the export is imported again.
var bucketImported = []byte("imported")

// importKey is a message's key in bucketImported: its exported ID, and
// the imports before this one when there were any (the key of a first
// hand-over is the bare ID, as the records written before the count).
func importKey(id string, before int) []byte {
	if before == 0 {
		return []byte(id)
	}
	return fmt.Appendf(nil, "%s/%d", id, before)
}

// ErrBadExport means an export failed its checks: a checksum that does not
// match, a file missing, or a manifest that cannot be read.
var ErrBadExport = errors.New("the export is damaged")

// ImportOptions direct Import.
type ImportOptions struct {
	// SkipBad imports the messages whose files are intact and leaves out
	// the others; without it, a single bad message stops the import before
	// anything is imported.
	SkipBad bool
	// CheckFile, when set, is asked about every directory and file read
	// from the export (who owns it, its mode) before it is trusted.
	CheckFile func(name string, fi fs.FileInfo) error

	crash func(step string) bool // see ExportOptions.crash
}

// ImportReport says what Import did.
type ImportReport struct {
	ExportID string `json:"export_id"`
	Source   string `json:"source,omitempty"`
	// Removed: the export was made with Remove, so it is the only copy of
	// its messages (those left out are not on the exporting node).
	Removed  bool `json:"removed,omitempty"`
	Messages int  `json:"messages"` // in the export
	Imported int  `json:"imported"` // added to this queue
	// Renamed maps the exported ID to the one given here, for the
	// messages whose ID was taken in this queue.
	Renamed map[string]string `json:"renamed,omitempty"`
	// Already counts messages imported before (from this export or
	// another with the same messages): not added again.
	Already int `json:"already"`
	// StillHere lists messages left out because this queue is the one they
	// were exported from, and still holds them (ExportHeld): Release gives
	// them back to delivery; importing them would make a second copy.
	StillHere []string `json:"still_here,omitempty"`
	// Bad lists the messages left out (SkipBad) and why.
	Bad []BadMessage `json:"bad,omitempty"`
}

// BadMessage is a message of an export that failed its checks.
type BadMessage struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// importRecord is the value kept under a message's exported ID.
type importRecord struct {
	ID       string    `json:"id"` // the message's ID in this queue
	ExportID string    `json:"export_id"`
	Source   string    `json:"source,omitempty"`
	At       time.Time `json:"at"`
}

// maxEnvelopeFile bounds what is read of an envelope or a manifest file.
const (
	maxEnvelopeFile = 16 << 20
	maxManifestFile = 256 << 20
)

// Import adds the messages of the export in dir to this queue. Every file
// is checked against its SHA-256 before anything is imported (and each body
// again as it is copied). A message keeps its ID when it is free here, and
// gets a new one otherwise. Each is committed with a record of its import,
// in one transaction: Import can be run again, after a crash or on the same
// export, and adds only what is not yet here.
func (q *Queue) Import(dir *os.Root, opts ImportOptions) (ImportReport, error) {
	var rep ImportReport
	crash := func(step string) bool { return opts.crash != nil && opts.crash(step) }
	man, err := readManifest(dir, opts.CheckFile)
	if err != nil {
		return rep, fmt.Errorf("import: %w", err)
	}
	rep.ExportID, rep.Source, rep.Removed, rep.Messages = man.ExportID, man.Source, man.Removed, len(man.Messages)
	var good []verified
	for _, e := range man.Messages {
		v, err := verifyEntry(dir, e, opts.CheckFile)
		if err != nil {
			rep.Bad = append(rep.Bad, BadMessage{ID: e.ID, Reason: err.Error()})
			continue
		}
		good = append(good, v)
	}
	if len(rep.Bad) > 0 && !opts.SkipBad {
		reasons := make([]string, 0, 5)
		for _, b := range rep.Bad[:min(len(rep.Bad), 5)] {
			reasons = append(reasons, b.ID+": "+b.Reason)
		}
		return rep, fmt.Errorf("import: %d of %d messages fail their checks (%s): %w; nothing was imported "+
			"(copy the export again, or import the intact messages with --skip-bad)",
			len(rep.Bad), len(man.Messages), strings.Join(reasons, "; "), ErrBadExport)
	}
	if crash("verified") {
		return rep, errExportCrash
	}
	for _, v := range good {
		id, err := q.importOne(dir, man, v, crash)
		switch {
		case errors.Is(err, errAlreadyImported):
			rep.Already++
		case errors.Is(err, errStillHere):
			rep.StillHere = append(rep.StillHere, v.entry.ID)
		case errors.Is(err, errChangedOnDisk):
			rep.Bad = append(rep.Bad, BadMessage{ID: v.entry.ID, Reason: err.Error()})
		case err != nil:
			return rep, fmt.Errorf("import %s: %w", v.entry.ID, err)
		default:
			rep.Imported++
			if id != v.entry.ID {
				if rep.Renamed == nil {
					rep.Renamed = map[string]string{}
				}
				rep.Renamed[v.entry.ID] = id
			}
		}
		if crash("committed") {
			return rep, errExportCrash
		}
	}
	if len(rep.Bad) > 0 && !opts.SkipBad {
		return rep, fmt.Errorf("import: %d messages changed after they were checked (%s): %w", len(rep.Bad), rep.Bad[0].Reason, ErrBadExport)
	}
	return rep, nil
}

var (
	errAlreadyImported = errors.New("imported before")
	errChangedOnDisk   = errors.New("changed after it was checked")
	errStillHere       = errors.New("still queued here, held for an export")
)

// verified is a message whose files matched their checksums.
type verified struct {
	entry ExportEntry
	msg   exportedMessage
}

// openFlags open a file of an export: never through a symbolic link, and
// without blocking on a FIFO (refused as not a regular file once open).
const openFlags = os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK

// openChecked opens name in dir, never through a symbolic link, and asks
// check about it.
func openChecked(dir *os.Root, name string, check func(string, fs.FileInfo) error) (*os.File, error) {
	f, err := dir.OpenFile(name, openFlags, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", name)
	}
	if err == nil && check != nil {
		err = check(name, fi)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func readLimited(dir *os.Root, name string, limit int64, check func(string, fs.FileInfo) error) ([]byte, error) {
	f, err := openChecked(dir, name, check)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && int64(len(data)) > limit {
		err = fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return data, err
}

// readManifest reads manifest.json and checks it against SHA256SUMS.
func readManifest(dir *os.Root, check func(string, fs.FileInfo) error) (*ExportManifest, error) {
	if check != nil {
		for _, d := range []string{".", "messages"} {
			fi, err := dir.Lstat(d)
			if err == nil && !fi.IsDir() {
				err = fmt.Errorf("%s is not a directory", d)
			}
			if err == nil {
				err = check(d, fi)
			}
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrBadExport, err)
			}
		}
	}
	data, err := readLimited(dir, "manifest.json", maxManifestFile, check)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no manifest.json in %s: not an export, or one cut off before it was complete", ErrBadExport, dir.Name())
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadExport, err)
	}
	sums, err := readLimited(dir, "SHA256SUMS", maxManifestFile, check)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadExport, err)
	}
	want, ok := "", false
	sc := bufio.NewScanner(bytes.NewReader(sums))
	for sc.Scan() {
		if sum, name, found := strings.Cut(sc.Text(), "  "); found && name == "manifest.json" {
			want, ok = sum, true
			break
		}
	}
	if !ok {
		return nil, fmt.Errorf("%w: SHA256SUMS has no line for manifest.json", ErrBadExport)
	}
	if got := sha256Hex(data); got != want {
		return nil, fmt.Errorf("%w: manifest.json has SHA-256 %s, SHA256SUMS says %s", ErrBadExport, got, want)
	}
	man := new(ExportManifest)
	if err := json.Unmarshal(data, man); err != nil {
		return nil, fmt.Errorf("%w: manifest.json: %w", ErrBadExport, err)
	}
	if man.Format != ExportFormat {
		return nil, fmt.Errorf("%w: manifest.json is format %q; this postern reads %q", ErrBadExport, man.Format, ExportFormat)
	}
	seen := map[string]bool{}
	for _, e := range man.Messages {
		if !validID(e.ID) {
			return nil, fmt.Errorf("%w: manifest.json names a message %q, not a queue ID", ErrBadExport, e.ID)
		}
		if seen[e.ID] {
			return nil, fmt.Errorf("%w: manifest.json names message %s twice", ErrBadExport, e.ID)
		}
		seen[e.ID] = true
	}
	return man, nil
}

// validID: a queue ID is made of NewID's alphabet; it names a file, so
// nothing else is let through.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// verifyEntry checks a message's files against their checksums, and its
// envelope for what this queue needs.
func verifyEntry(dir *os.Root, e ExportEntry, check func(string, fs.FileInfo) error) (verified, error) {
	v := verified{entry: e}
	env, err := readLimited(dir, path.Join("messages", e.ID+".json"), maxEnvelopeFile, check)
	if err != nil {
		return v, err
	}
	if got := sha256Hex(env); got != e.EnvelopeSHA256 {
		return v, fmt.Errorf("envelope checksum mismatch (SHA-256 %s, manifest says %s)", got, e.EnvelopeSHA256)
	}
	f, err := openChecked(dir, path.Join("messages", e.ID+".eml"), check)
	if err != nil {
		return v, err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	f.Close()
	if err != nil {
		return v, fmt.Errorf("read body: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != e.BodySHA256 || n != e.Size {
		return v, fmt.Errorf("body checksum mismatch (%d bytes, SHA-256 %s; manifest says %d bytes, %s)", n, got, e.Size, e.BodySHA256)
	}
	if err := json.Unmarshal(env, &v.msg); err != nil {
		return v, fmt.Errorf("envelope: %w", err)
	}
	if v.msg.ID != e.ID || v.msg.Size != e.Size {
		return v, fmt.Errorf("envelope is of message %s, %d bytes; manifest says %s, %d bytes", v.msg.ID, v.msg.Size, e.ID, e.Size)
	}
	if len(v.msg.Recipients) == 0 {
		return v, errors.New("envelope has no recipients")
	}
	for _, r := range v.msg.Recipients {
		if r.State != Pending && r.State != Delivered && r.State != Failed {
			return v, fmt.Errorf("recipient %s has state %d, which an export never holds", r.Addr, r.State)
		}
	}
	return v, nil
}

// importOne adds one verified message, and returns its ID here.
func (q *Queue) importOne(dir *os.Root, man *ExportManifest, v verified, crash func(string) bool) (string, error) {
	origin := []byte(v.entry.ID)
	key := importKey(v.entry.ID, v.msg.Imports)
	var superseded *Message
	var id string
	var taken bool
	err := q.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketImported); b != nil && b.Get(key) != nil {
			return errAlreadyImported
		}
		if m, err := getMessage(tx, v.entry.ID); err == nil && staleCopy(m, &v.msg) && m.Imports >= v.msg.Imports {
			return errStillHere // this is the queue it was exported from
		}
		taken = tx.Bucket(bucketMessages).Get(origin) != nil || tx.Bucket(bucketBodies).Get(origin) != nil
		return nil
	})
	if err != nil {
		return "", err
	}
	id = v.entry.ID
	if _, err := os.Lstat(q.spoolPath(id)); taken || !errors.Is(err, fs.ErrNotExist) {
		id = q.NewID()
	}
	m := &Message{ID: id, Envelope: v.msg.Envelope, Size: v.msg.Size, Held: v.msg.Held, Imports: v.msg.Imports + 1}
	now := q.clock()
	for i := range m.Recipients {
		r := &m.Recipients[i]
		r.Lease = 0
		if r.State == Pending && r.Due.IsZero() {
			r.Due = now
		}
	}
	if m.Arrival.IsZero() {
		m.Arrival = now
	}
	inline, err := q.importBody(dir, m, v.entry)
	if err != nil {
		return "", err
	}
	if crash("spooled") {
		return "", errExportCrash // a spool file no message owns: Recover removes it
	}
	rec, err := json.Marshal(importRecord{ID: id, ExportID: man.ExportID, Source: man.Source, At: now.UTC()})
	if err != nil {
		return "", err
	}
	err = q.update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketImported)
		if err != nil {
			return err
		}
		if b.Get(key) != nil {
			return errAlreadyImported // another import of the same message, meanwhile
		}
		// This queue exported the message once and still holds that
		// copy, held; the one imported went through more hand-overs
		// since, and knows what was delivered meanwhile: it replaces the
		// held copy, which would send those recipients again if released.
		superseded = nil
		if old, err := getMessage(tx, v.entry.ID); err == nil && staleCopy(old, &v.msg) && old.Imports < v.msg.Imports {
			if err := deleteMessage(tx, old); err != nil {
				return err
			}
			superseded = old
			// The export this queue made of it is recognised from now on,
			// should it be imported here by mistake: its copy is gone.
			if err := b.Put(importKey(v.entry.ID, old.Imports), rec); err != nil {
				return err
			}
		}
		if err := putNew(tx, m, inline); err != nil {
			return err
		}
		return b.Put(key, rec)
	})
	if err != nil && m.Spooled {
		os.Remove(q.spoolPath(id))
	}
	if err == nil && superseded != nil && superseded.Spooled {
		os.Remove(q.spoolPath(superseded.ID))
	}
	return id, err
}

// staleCopy: m, held here for an export, is a copy of the exported message
// x (this queue exported it once and still holds it).
func staleCopy(m *Message, x *exportedMessage) bool {
	return m.ExportHeld && m.Arrival.Equal(x.Arrival) && m.From == x.From
}

// importBody copies the body, checking its checksum again as it goes (the
// file could have changed since it was verified): into memory when small,
// into an fsynced spool file otherwise.
func (q *Queue) importBody(dir *os.Root, m *Message, e ExportEntry) ([]byte, error) {
	f, err := openChecked(dir, path.Join("messages", e.ID+".eml"), nil)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	body := io.TeeReader(f, h)
	matches := func(h hash.Hash, n int64) error {
		if got := hex.EncodeToString(h.Sum(nil)); got != e.BodySHA256 || n != e.Size {
			return fmt.Errorf("body: %w", errChangedOnDisk)
		}
		return nil
	}
	if e.Size <= q.inlineLimit {
		inline, err := io.ReadAll(io.LimitReader(body, q.inlineLimit+1))
		if err != nil {
			return nil, err
		}
		return inline, matches(h, int64(len(inline)))
	}
	n, err := q.spool(m.ID, body)
	if err != nil {
		return nil, err
	}
	if err := matches(h, n); err != nil {
		os.Remove(q.spoolPath(m.ID))
		return nil, err
	}
	m.Spooled = true
	return nil, nil
}
