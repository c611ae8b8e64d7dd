package queue

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	ErrNotFound  = errors.New("no such message")
	ErrLeaseLost = errors.New("lease no longer held")
	// ErrLocked means another process has the database open.
	ErrLocked = errors.New("queue database is in use by another process")
	ErrClosed = errors.New("queue is closed")
	// ErrExists means a message with the ID given to Enqueue is already
	// queued; the queued one is left as it was.
	ErrExists = errors.New("message ID already in use")
	// ErrBodyGone means a queued message's body cannot be found (its spool
	// file was lost: damaged storage, or removed by hand).
	ErrBodyGone = errors.New("message body is gone")
)

var (
	bucketMessages = []byte("messages")
	bucketBodies   = []byte("bodies")
	bucketSchedule = []byte("schedule")
	bucketJournal  = []byte("journal")
)

// Options configure Open. Zero values take the defaults.
type Options struct {
	Clock       func() time.Time // tells the queue what time it is; default time.Now
	SpoolDir    string           // default: "spool" beside the database file
	InlineLimit int64            // bodies up to this size live inside bbolt; default 128 KiB
	// LockTimeout is how long Open waits for another process to let go of
	// the database file; default 1s.
	LockTimeout time.Duration
	// CheckTimeout bounds the consistency check Open runs on the database
	// (ErrCheckTimeout past it); default 1 minute; negative: no check.
	CheckTimeout time.Duration
}

// Queue is a durable mail queue in one bbolt file. It is safe for concurrent use.
type Queue struct {
	db          *bolt.DB
	path        string
	clock       func() time.Time
	spoolDir    string
	inlineLimit int64

	// idMu guards lastID, the time-and-counter half of the last ID given
	// out, which only ever grows (see NewID).
	idMu   sync.Mutex
	lastID uint64

	// exporting is held by the export running (one at a time: a failed
	// export gives back to delivery the messages it marked, which another
	// export running meanwhile may have written and published).
	exporting sync.Mutex

	// closeMu guards writes against Close: a session cut off at shutdown
	// may still try to enqueue, and must get ErrClosed, not a panic.
	closeMu sync.RWMutex
	closed  bool
	writes  chan *writeRequest
	stopped chan struct{}
	// damaged, once set, is the error every write gets: bbolt found a
	// damaged page while writing (see runGroup).
	damaged atomic.Pointer[error]
	// readSinceDrop counts the envelopes Lease has read since the pages
	// of the memory map were last released (see dropMapped). Only the
	// committer's goroutine, which runs every write, touches it.
	readSinceDrop int
}

// Open opens (creating if needed) the queue database at path.
func Open(path string, opts Options) (*Queue, error) {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.SpoolDir == "" {
		opts.SpoolDir = filepath.Join(filepath.Dir(path), "spool")
	}
	if opts.InlineLimit <= 0 {
		opts.InlineLimit = 128 << 10
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if err := os.MkdirAll(opts.SpoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("queue spool directory: %w", err)
	}
	// The spool directory's own entry must be durable before any file in it is.
	if err := syncDir(filepath.Dir(opts.SpoolDir)); err != nil {
		return nil, err
	}
	if opts.CheckTimeout == 0 {
		opts.CheckTimeout = time.Minute
	}
	db, err := openBolt(path, &bolt.Options{Timeout: opts.LockTimeout, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("open queue %s: %w", path, err)
	}
	// A damaged page found now stops the start with advice; found later, in
	// the committer, it could only end the process (see commitGroup).
	if opts.CheckTimeout > 0 {
		if closed, err := check(db, path, opts.CheckTimeout); err != nil {
			if !closed {
				db.Close()
			}
			return nil, err
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMessages, bucketBodies, bucketSchedule, bucketJournal} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise queue %s: %w", path, err)
	}
	q := &Queue{
		db:          db,
		path:        path,
		clock:       opts.Clock,
		spoolDir:    opts.SpoolDir,
		inlineLimit: opts.InlineLimit,
		writes:      make(chan *writeRequest, 4096),
		stopped:     make(chan struct{}),
	}
	go q.committer()
	return q, nil
}

// Close waits for pending writes and closes the database.
func (q *Queue) Close() error {
	q.closeMu.Lock()
	if q.closed {
		q.closeMu.Unlock()
		return ErrClosed
	}
	q.closed = true
	close(q.writes)
	q.closeMu.Unlock()
	<-q.stopped
	return q.db.Close()
}

var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// NewID returns a fresh message ID, for callers that need to know it before
// Enqueue (to write it into the message). It is a unique identifier that sorts
// roughly by creation time: 48 bits of milliseconds and a 16-bit counter, then
// 32 random bits.
//
// Within one process the first 64 bits only ever grow, even when the clock
// steps back, so no two IDs of one process are equal. Each millisecond's
// counter starts at a random value, so two processes (a restart after the
// clock stepped back) share an ID only if 48 random bits agree; and should
// they, Enqueue refuses the second rather than replace the first (ErrExists).
func (q *Queue) NewID() string {
	var b [12]byte
	rand.Read(b[6:])
	next := uint64(q.clock().UnixMilli())<<16 | uint64(binary.BigEndian.Uint16(b[6:8]))
	q.idMu.Lock()
	if next <= q.lastID {
		next = q.lastID + 1
	}
	q.lastID = next
	q.idMu.Unlock()
	binary.BigEndian.PutUint64(b[0:8], next)
	return idEncoding.EncodeToString(b[:])
}

// Enqueue stores a new message under id (from NewID; "" picks one) and
// returns the ID once the message is durable. The body is read to its end; a
// read error aborts the enqueue, stores nothing, and is returned as it came
// (errors.Is and errors.As see the reader's error). An id already queued is
// refused with ErrExists: an acknowledged message is never replaced.
func (q *Queue) Enqueue(id string, env Envelope, body io.Reader) (string, error) {
	return q.EnqueueSealed(id, env, body, nil)
}

// EnqueueSealed is Enqueue with a seal: once the body has been read and
// stored, and before anything is committed, seal returns bytes that become
// the start of the stored message. It is for what can only be computed
// over the whole body (a signature header), without holding the body in
// memory. An error from seal refuses the message.
func (q *Queue) EnqueueSealed(id string, env Envelope, body io.Reader, seal func() ([]byte, error)) (string, error) {
	id, _, err := q.enqueue(id, env, body, seal, 0, nil)
	return id, err
}

// EnqueueLeased is EnqueueSealed (seal may be nil) that may also lease
// every recipient of the new message, for hold, in the same transaction: a
// caller that has a delivery worker free hands it the message at once, and
// the message needs no lease transaction of its own. take, when not nil, is
// asked once the body is stored and just before the commit (so that no
// worker waits on a body still arriving) whether to lease; false enqueues
// the message unleased, and the lease is nil. So is it for a message
// without recipients.
//
// The lease is what Lease would have granted in the commit: it is held
// for hold from then (not from when the body began to arrive), runs out at
// Lease.Until, and a process that dies holding it leaves the recipients
// due then (or at the next start, when Recover returns every lease).
func (q *Queue) EnqueueLeased(id string, env Envelope, body io.Reader, seal func() ([]byte, error), hold time.Duration, take func() bool) (string, *Lease, error) {
	return q.enqueue(id, env, body, seal, hold, take)
}

// enqueue stores a new message; hold > 0 leases its recipients if take
// agrees (see EnqueueLeased).
func (q *Queue) enqueue(id string, env Envelope, body io.Reader, seal func() ([]byte, error), hold time.Duration, take func() bool) (string, *Lease, error) {
	if id == "" {
		id = q.NewID()
	}
	m, inline, err := q.prepare(id, env, body)
	if err != nil {
		return "", nil, err
	}
	var prefix []byte
	if seal != nil {
		if prefix, err = seal(); err != nil {
			if m.Spooled {
				os.Remove(q.spoolPath(id))
			}
			return "", nil, fmt.Errorf("seal message %s: %w", id, err)
		}
		m.Size += int64(len(prefix))
		if !m.Spooled {
			inline, prefix = append(prefix, inline...), nil
		}
	}
	var lease *Lease
	leasing := hold > 0 && len(m.Recipients) > 0 && (take == nil || take())
	err = q.update(func(tx *bolt.Tx) error {
		stored := m
		if leasing {
			// The first lease of the message, granted as Lease would: in
			// the transaction, from the time now. Not from when the body
			// began to arrive (prepare's time, when every recipient fell
			// due): a slow client would leave the worker a lease already
			// run out, and the scheduler would hand the recipients to a
			// second worker. Granted on a copy: the group may run this
			// again.
			at := q.clock()
			if due := m.Recipients[0].Due; at.Before(due) {
				at = due // the clock stepped back since prepare
			}
			c := m.clone()
			l, _ := grant(&c, at, hold)
			stored, lease = &c, &l
		}
		if err := putNew(tx, stored, inline); err != nil {
			return err
		}
		if len(prefix) > 0 {
			return tx.Bucket(bucketBodies).Put(prefixKey(id), prefix)
		}
		return nil
	})
	if err != nil {
		if m.Spooled {
			os.Remove(q.spoolPath(id))
		}
		return "", nil, fmt.Errorf("commit message %s: %w", id, err)
	}
	return id, lease, nil
}

// prepare reads the body: into memory when small, into an fsynced spool file
// otherwise.
func (q *Queue) prepare(id string, env Envelope, body io.Reader) (*Message, []byte, error) {
	now := q.clock()
	if env.Arrival.IsZero() {
		env.Arrival = now
	}
	env.Recipients = append([]Recipient(nil), env.Recipients...)
	for i := range env.Recipients {
		env.Recipients[i].State = Pending
		env.Recipients[i].Due = now
	}
	m := &Message{ID: id, Envelope: env}

	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(body, q.inlineLimit+1))
	if err != nil {
		return nil, nil, err
	}
	if n <= q.inlineLimit {
		m.Size = n
		return m, buf.Bytes(), nil
	}
	size, err := q.spool(id, io.MultiReader(&buf, body))
	if err != nil {
		return nil, nil, err
	}
	m.Size, m.Spooled = size, true
	return m, nil, nil
}

func (q *Queue) spoolPath(id string) string { return filepath.Join(q.spoolDir, id) }

func (q *Queue) spool(id string, body io.Reader) (int64, error) {
	path := q.spoolPath(id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if errors.Is(err, os.ErrExist) {
		return 0, fmt.Errorf("create spool file %s: %w", id, ErrExists) // another message's body
	}
	if err != nil {
		return 0, fmt.Errorf("create spool file: %w", err)
	}
	n, err := io.Copy(f, body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(q.spoolDir)
	}
	if err != nil {
		os.Remove(path)
		return 0, err
	}
	return n, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func putNew(tx *bolt.Tx, m *Message, inline []byte) error {
	if tx.Bucket(bucketMessages).Get([]byte(m.ID)) != nil {
		return fmt.Errorf("%s: %w", m.ID, ErrExists)
	}
	if !m.Spooled {
		if err := tx.Bucket(bucketBodies).Put([]byte(m.ID), inline); err != nil {
			return err
		}
	}
	return putMessage(tx, m, nil)
}

// putMessage stores m and moves its schedule entry from the one it had
// (old, if any) to the one it needs now.
func putMessage(tx *bolt.Tx, m *Message, old *Message) error {
	sched := tx.Bucket(bucketSchedule)
	if old != nil {
		if t, ok := old.wake(); ok {
			if err := sched.Delete(scheduleKey(t, old.ID)); err != nil {
				return err
			}
		}
	}
	if t, ok := m.wake(); ok {
		if err := sched.Put(scheduleKey(t, m.ID), nil); err != nil {
			return err
		}
	}
	stored := *m
	stored.BodyGone = false // found out afresh whenever asked
	data, err := json.Marshal(&stored)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketMessages).Put([]byte(m.ID), data)
}

func scheduleKey(t time.Time, id string) []byte {
	k := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	return append(k, id...)
}

func getMessage(tx *bolt.Tx, id string) (*Message, error) {
	data := tx.Bucket(bucketMessages).Get([]byte(id))
	if data == nil {
		return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	m := new(Message)
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("decode message %s: %w", id, err)
	}
	return m, nil
}

// Get returns a message's envelope and state.
func (q *Queue) Get(id string) (Message, error) {
	var m *Message
	err := q.view(func(tx *bolt.Tx) error {
		var err error
		if m, err = getMessage(tx, id); err == nil {
			m.BodyGone = q.bodyGone(tx, m)
		}
		return err
	})
	if err != nil {
		return Message{}, err
	}
	return *m, nil
}

// bodyGone reports whether m's body cannot be found where it should be.
func (q *Queue) bodyGone(tx *bolt.Tx, m *Message) bool {
	if !m.Spooled {
		return tx.Bucket(bucketBodies).Get([]byte(m.ID)) == nil
	}
	_, err := os.Stat(q.spoolPath(m.ID))
	return errors.Is(err, os.ErrNotExist)
}

// Body opens a message's body for reading. An inline body is found in its
// bucket without decoding the envelope; otherwise it is a spool file.
func (q *Queue) Body(id string) (io.ReadCloser, error) {
	var inline, prefix []byte
	var known bool
	err := q.view(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketBodies).Get([]byte(id)); v != nil {
			inline, known = bytes.Clone(v), true
			return nil
		}
		prefix = bytes.Clone(tx.Bucket(bucketBodies).Get(prefixKey(id)))
		known = tx.Bucket(bucketMessages).Get([]byte(id)) != nil
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !known {
		return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if inline != nil {
		return io.NopCloser(bytes.NewReader(inline)), nil
	}
	f, err := os.Open(q.spoolPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open body of %s: %w: %w", id, ErrBodyGone, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open body of %s: %w", id, err)
	}
	if prefix != nil {
		return struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(prefix), f), f}, nil
	}
	return f, nil
}

// prefixKey keeps the seal of a spooled message beside the inline bodies
// (a message ID never contains a slash).
func prefixKey(id string) []byte { return []byte(id + "/prefix") }

// Filter selects messages for List. Zero fields match everything.
type Filter struct {
	RcptDomain string
	Sender     string
	State      string // "active", "deferred", "held" or "exported", as Message.State says
	// ArrivedBefore and ArrivedAfter bound the arrival time (age filters).
	ArrivedBefore, ArrivedAfter time.Time
	Limit                       int
}

func (f Filter) match(m *Message) bool {
	if f.Sender != "" && m.From != f.Sender {
		return false
	}
	if !f.ArrivedBefore.IsZero() && !m.Arrival.Before(f.ArrivedBefore) {
		return false
	}
	if !f.ArrivedAfter.IsZero() && !m.Arrival.After(f.ArrivedAfter) {
		return false
	}
	if f.RcptDomain != "" {
		found := false
		for _, r := range m.Recipients {
			found = found || Domain(r.Addr) == f.RcptDomain
		}
		if !found {
			return false
		}
	}
	return f.State == "" || f.State == m.State()
}

// State is where a message stands as a whole: "exported" (held here since
// it was written to a queue export); "held" by the operator; "deferred"
// when a pending recipient has been tried and must wait; else "active"
// (new, being delivered, or finished and awaiting its notices).
func (m *Message) State() string {
	if m.ExportHeld {
		return "exported"
	}
	if m.Held {
		return "held"
	}
	for _, r := range m.Recipients {
		if r.State == Pending && r.Attempts > 0 {
			return "deferred"
		}
	}
	return "active"
}

// Stats is the queue at a glance.
type Stats struct {
	Messages map[string]int // by State: active, deferred, held, exported
	// Recipients still to be delivered (pending or in flight).
	Recipients int
	// Oldest is the arrival time of the oldest message (zero when empty).
	Oldest time.Time
	// BodyGone counts messages whose body cannot be found (see
	// Message.BodyGone): damaged storage that the operator must look at.
	BodyGone int
}

// Stats counts the queue. It reads every message, so callers that ask
// often (metrics) should keep the result a while.
func (q *Queue) Stats() (Stats, error) {
	st := Stats{Messages: map[string]int{"active": 0, "deferred": 0, "held": 0, "exported": 0}}
	err := q.view(func(tx *bolt.Tx) error {
		read := 0
		err := tx.Bucket(bucketMessages).ForEach(func(k, v []byte) error {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode message %s: %w", k, err)
			}
			if read++; read%dropEvery == 0 {
				dropMapped(q.db, tx.Size()) // see below
			}
			st.Messages[m.State()]++
			// Only a spool file can go missing on its own (an inline body is
			// written with its envelope, and damage to the file is the
			// start-up check's): looking up every inline body here would
			// page the whole queue's bodies into memory on each scrape.
			if m.Spooled && q.bodyGone(tx, &m) {
				st.BodyGone++
			}
			for _, r := range m.Recipients {
				if !r.State.Final() {
					st.Recipients++
				}
			}
			if st.Oldest.IsZero() || m.Arrival.Before(st.Oldest) {
				st.Oldest = m.Arrival
			}
			return nil
		})
		if err != nil {
			return err
		}
		// Every envelope was read through the memory map, and the bodies
		// beside them were mapped along (see dropMapped): on every metrics
		// scrape, the whole queue would become resident. So the pages are
		// let go of as the walk goes (the read transaction keeps the map
		// where it is) and at its end. A failure costs memory only.
		dropMapped(q.db, tx.Size())
		return nil
	})
	return st, err
}

// List returns the messages that match f, oldest ID first.
func (q *Queue) List(f Filter) ([]Message, error) {
	var out []Message
	err := q.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMessages).ForEach(func(k, v []byte) error {
			var m Message
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode message %s: %w", k, err)
			}
			if f.match(&m) && (f.Limit <= 0 || len(out) < f.Limit) {
				m.BodyGone = q.bodyGone(tx, &m)
				out = append(out, m)
			}
			return nil
		})
	})
	return out, err
}

// Count returns the number of queued messages.
func (q *Queue) Count() (int, error) {
	var n int
	err := q.view(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketMessages).Stats().KeyN
		return nil
	})
	return n, err
}

// modify applies change to message id in a write transaction.
func (q *Queue) modify(id string, change func(m *Message, now time.Time) error) error {
	return q.update(func(tx *bolt.Tx) error {
		old, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		now := q.clock()
		m := old.clone()
		if err := change(&m, now); err != nil {
			return err
		}
		return putMessage(tx, &m, old)
	})
}

// Hold stops scheduling a message until Release. Attempts already in flight finish.
func (q *Queue) Hold(id string) error {
	return q.modify(id, func(m *Message, _ time.Time) error { m.Held = true; return nil })
}

// Release makes a held message eligible again at its recipients' due times.
// It also gives back to delivery a message held for an export (ExportHeld).
func (q *Queue) Release(id string) error {
	return q.modify(id, func(m *Message, _ time.Time) error { m.Held, m.ExportHeld = false, false; return nil })
}

// RetryNow makes every pending recipient of a message due now.
func (q *Queue) RetryNow(id string) error {
	return q.modify(id, func(m *Message, now time.Time) error {
		for i := range m.Recipients {
			if m.Recipients[i].State == Pending {
				m.Recipients[i].Due = now
			}
		}
		return nil
	})
}

// RetryAllNow makes every pending recipient of every deferred message due
// now (postqueue -f), and returns how many messages it touched.
func (q *Queue) RetryAllNow() (int, error) {
	var n int
	err := q.update(func(tx *bolt.Tx) error {
		n = 0
		now := q.clock()
		var changed []*Message
		var olds []*Message
		err := tx.Bucket(bucketMessages).ForEach(func(k, v []byte) error {
			var old Message
			if err := json.Unmarshal(v, &old); err != nil {
				return fmt.Errorf("decode message %s: %w", k, err)
			}
			if old.State() != "deferred" {
				return nil
			}
			m := old.clone()
			for i := range m.Recipients {
				if m.Recipients[i].State == Pending {
					m.Recipients[i].Due = now
				}
			}
			changed, olds = append(changed, &m), append(olds, &old)
			return nil
		})
		if err != nil {
			return err
		}
		// Written after the walk: bbolt forbids changing a bucket while
		// iterating over it.
		for i, m := range changed {
			if err := putMessage(tx, m, olds[i]); err != nil {
				return err
			}
		}
		n = len(changed)
		return nil
	})
	return n, err
}

// ErrInFlight means a recipient is leased to a worker and cannot be changed
// until its attempt ends.
var ErrInFlight = errors.New("a delivery attempt is in flight")

// FailNow gives every pending recipient of a message a final failure with
// reply, so that the sender is notified as for any permanent failure (the
// delivery engine retires the message and sends the notice). Recipients
// leased to a worker are left alone, and the error is ErrInFlight. No
// enhanced status is recorded (LastStatus is cleared): the notice states the
// generic 5.0.0 (RFC 3463 3.1).
func (q *Queue) FailNow(id, reply string) (int, error) {
	return q.FailNowRecorded(id, reply, nil)
}

// FailNowRecorded is FailNow that also journals, in the same transaction,
// the entries record makes for each recipient it fails (the evidence of an
// operator's bounce): the failure and its record are committed together or
// not at all. record sees the message as changed, and may be nil.
func (q *Queue) FailNowRecorded(id, reply string, record func(m *Message, rcpt int, now time.Time) [][]byte) (int, error) {
	var n, leased int
	err := q.update(func(tx *bolt.Tx) error {
		old, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		now := q.clock()
		m := old.clone()
		n, leased = 0, 0
		var failed []int
		for i := range m.Recipients {
			r := &m.Recipients[i]
			switch r.State {
			case Pending:
				r.State, r.FinalAt, r.LastReply, r.LastStatus, r.LastHost = Failed, now, reply, "", ""
				failed = append(failed, i)
				n++
			case Leased:
				leased++
			}
		}
		if record != nil {
			for _, i := range failed {
				if err := appendJournal(tx, now, record(&m, i, now)); err != nil {
					return err
				}
			}
		}
		return putMessage(tx, &m, old)
	})
	if err == nil && leased > 0 {
		err = fmt.Errorf("%s: %d recipients not failed: %w", id, leased, ErrInFlight)
	}
	return n, err
}

// Delete removes a message without any notice to its sender.
func (q *Queue) Delete(id string) error {
	var spooled bool
	err := q.update(func(tx *bolt.Tx) error {
		m, err := getMessage(tx, id)
		if err != nil {
			return err
		}
		spooled = m.Spooled
		return deleteMessage(tx, m)
	})
	if err == nil && spooled {
		os.Remove(q.spoolPath(id))
	}
	return err
}

func deleteMessage(tx *bolt.Tx, m *Message) error {
	if t, ok := m.wake(); ok {
		if err := tx.Bucket(bucketSchedule).Delete(scheduleKey(t, m.ID)); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bucketBodies).Delete([]byte(m.ID)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketBodies).Delete(prefixKey(m.ID)); err != nil {
		return err
	}
	return tx.Bucket(bucketMessages).Delete([]byte(m.ID))
}
