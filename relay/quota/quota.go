// Package quota counts what each submission credential sends, so that a
// leaked password cannot flood: messages and recipients per hour, and a
// switch that stops a credential at once.
//
// Durability, and what it costs. The counts live in memory, in one bucket
// per minute for the last hour (a sliding window of 60 minutes, one minute
// coarse), and are written to the state database by Flush: once a minute
// while the daemon runs (Run), and at shutdown. A message therefore costs
// no write and no fsync of its own; a crash forgets at most the counts of
// the minute since the last flush, and a clean restart forgets nothing: the
// window is not reset by a restart. A suspension is written at once, since
// it must survive any crash.
package quota

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketVolume    = []byte("quota_volume")
	bucketSuspended = []byte("quota_suspended")
)

// window is the span the limits count over.
const window = time.Hour

// Limits are hourly limits; 0 is unlimited.
type Limits struct {
	MessagesPerHour   int
	RecipientsPerHour int
}

// Refusal is why a credential may not send now. Kind is one of the
// Refused* constants.
type Refusal struct {
	Kind  string
	Limit int // the limit reached, for messages and recipients
}

// Kinds of Refusal, also the metric's reason.
const (
	RefusedMessages   = "messages"
	RefusedRecipients = "recipients"
	RefusedSuspended  = "suspended"
)

func (r *Refusal) Error() string {
	if r.Kind == RefusedSuspended {
		return "credential suspended"
	}
	return fmt.Sprintf("%s per hour limit (%d) reached", r.Kind, r.Limit)
}

// Minute is one minute's volume of one credential.
type Minute struct {
	Start      time.Time `json:"start"`
	Messages   int       `json:"messages"`
	Recipients int       `json:"recipients"`
}

// Counter keeps every credential's recent volume and suspensions.
type Counter struct {
	db    *bolt.DB
	clock func() time.Time

	mu        sync.Mutex
	volume    map[string][]Minute // oldest first, none older than window
	dirty     map[string]bool
	suspended map[string]time.Time
	// inflight is what the transactions begun and not yet ended hold of
	// each credential's limits (ReserveMail, ReserveRecipient, Release):
	// counted against the limits with what was sent, so that sessions
	// running at once cannot each pass the checks before any counts.
	inflight map[string]Minute
}

// Open loads the counts and suspensions kept in db; clock may be nil for
// the wall clock.
func Open(db *bolt.DB, clock func() time.Time) (*Counter, error) {
	if clock == nil {
		clock = time.Now
	}
	c := &Counter{db: db, clock: clock, volume: map[string][]Minute{}, dirty: map[string]bool{}, suspended: map[string]time.Time{},
		inflight: map[string]Minute{}}
	err := db.Update(func(tx *bolt.Tx) error {
		vb, err := tx.CreateBucketIfNotExists(bucketVolume)
		if err != nil {
			return err
		}
		sb, err := tx.CreateBucketIfNotExists(bucketSuspended)
		if err != nil {
			return err
		}
		err = vb.ForEach(func(k, v []byte) error {
			var minutes []Minute
			if err := json.Unmarshal(v, &minutes); err != nil {
				return fmt.Errorf("volume of %s: %w", k, err)
			}
			c.volume[string(k)] = minutes
			return nil
		})
		if err != nil {
			return err
		}
		return sb.ForEach(func(k, v []byte) error {
			var at time.Time
			if err := at.UnmarshalText(v); err != nil {
				return fmt.Errorf("suspension of %s: %w", k, err)
			}
			c.suspended[string(k)] = at
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("sending limits state: %w", err)
	}
	return c, nil
}

// recent drops what has left the window and returns what is in it.
// Called with c.mu held.
func (c *Counter) recent(user string, now time.Time) []Minute {
	minutes := c.volume[user]
	cut := now.Truncate(time.Minute).Add(-window)
	i := 0
	for i < len(minutes) && !minutes[i].Start.After(cut) {
		i++
	}
	if i > 0 {
		minutes = minutes[i:]
		if len(minutes) == 0 {
			delete(c.volume, user)
		} else {
			c.volume[user] = minutes
		}
		c.dirty[user] = true
	}
	return minutes
}

// Used returns the messages and recipients user sent in the last hour.
func (c *Counter) Used(user string) (messages, recipients int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used(user)
}

// used is Used with c.mu held.
func (c *Counter) used(user string) (messages, recipients int) {
	for _, m := range c.recent(user, c.clock()) {
		messages += m.Messages
		recipients += m.Recipients
	}
	return messages, recipients
}

// CheckMail says whether user may start a message (MAIL): not suspended,
// under its message limit, and with a recipient left under its recipient
// limit. What transactions in flight hold counts as sent.
func (c *Counter) CheckMail(user string, lim Limits) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkMail(user, lim)
}

// checkMail is CheckMail with c.mu held.
func (c *Counter) checkMail(user string, lim Limits) error {
	if _, ok := c.suspended[user]; ok {
		return &Refusal{Kind: RefusedSuspended}
	}
	messages, recipients := c.used(user)
	held := c.inflight[user]
	if lim.MessagesPerHour > 0 && messages+held.Messages >= lim.MessagesPerHour {
		return &Refusal{Kind: RefusedMessages, Limit: lim.MessagesPerHour}
	}
	if lim.RecipientsPerHour > 0 && recipients+held.Recipients >= lim.RecipientsPerHour {
		return &Refusal{Kind: RefusedRecipients, Limit: lim.RecipientsPerHour}
	}
	return nil
}

// CheckRecipient says whether user may add one more recipient (RCPT) to a
// message that has pending recipients already (not held with
// ReserveRecipient).
func (c *Counter) CheckRecipient(user string, lim Limits, pending int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkRecipient(user, lim, pending)
}

// checkRecipient is CheckRecipient with c.mu held.
func (c *Counter) checkRecipient(user string, lim Limits, pending int) error {
	if _, ok := c.suspended[user]; ok {
		return &Refusal{Kind: RefusedSuspended}
	}
	if lim.RecipientsPerHour <= 0 {
		return nil
	}
	_, recipients := c.used(user)
	if recipients+c.inflight[user].Recipients+pending >= lim.RecipientsPerHour {
		return &Refusal{Kind: RefusedRecipients, Limit: lim.RecipientsPerHour}
	}
	return nil
}

// ReserveMail is CheckMail for a transaction that begins: when user may
// start a message, the message is held against its limit, as if sent,
// until Release gives it back. Check and hold are one step, so sessions
// of one credential running at once cannot all pass before any holds.
func (c *Counter) ReserveMail(user string, lim Limits) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkMail(user, lim); err != nil {
		return err
	}
	c.hold(user, 1, 0)
	return nil
}

// ReserveRecipient is CheckRecipient for a recipient that the transaction
// takes: held against the limit until Release.
func (c *Counter) ReserveRecipient(user string, lim Limits) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkRecipient(user, lim, 0); err != nil {
		return err
	}
	c.hold(user, 0, 1)
	return nil
}

// Release gives back what a transaction held, when it ends: after Add for
// a queued message, or without for one abandoned.
func (c *Counter) Release(user string, messages, recipients int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hold(user, -messages, -recipients)
}

// hold changes what is in flight for user. Called with c.mu held.
func (c *Counter) hold(user string, messages, recipients int) {
	h := c.inflight[user]
	h.Messages += messages
	h.Recipients += recipients
	if h.Messages <= 0 && h.Recipients <= 0 {
		delete(c.inflight, user)
		return
	}
	c.inflight[user] = h
}

// Add counts one accepted message with its recipients.
func (c *Counter) Add(user string, recipients int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock()
	minute := now.Truncate(time.Minute)
	minutes := c.recent(user, now)
	if n := len(minutes); n > 0 && minutes[n-1].Start.Equal(minute) {
		minutes[n-1].Messages++
		minutes[n-1].Recipients += recipients
	} else {
		c.volume[user] = append(minutes, Minute{Start: minute, Messages: 1, Recipients: recipients})
	}
	c.dirty[user] = true
}

// Minutes returns user's volume by minute over the last hour, oldest
// first, minutes without mail left out.
func (c *Counter) Minutes(user string) []Minute {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.recent(user, c.clock()))
}

// Flush writes the counts changed since the last flush, in one
// transaction.
func (c *Counter) Flush() error {
	c.mu.Lock()
	now := c.clock()
	for user := range c.volume {
		c.recent(user, now) // marks dirty what aged out, to drop it on disk too
	}
	writes := map[string][]byte{}
	for user := range c.dirty {
		minutes := c.recent(user, now)
		if len(minutes) == 0 {
			writes[user] = nil
			continue
		}
		v, err := json.Marshal(minutes)
		if err != nil {
			c.mu.Unlock()
			return err
		}
		writes[user] = v
	}
	clear(c.dirty)
	c.mu.Unlock()
	if len(writes) == 0 {
		return nil
	}
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVolume)
		for user, v := range writes {
			var err error
			if v == nil {
				err = b.Delete([]byte(user))
			} else {
				err = b.Put([]byte(user), v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Written next time: the counts are still in memory.
		c.mu.Lock()
		for user := range writes {
			c.dirty[user] = true
		}
		c.mu.Unlock()
		return fmt.Errorf("sending limits state: %w", err)
	}
	return nil
}

// FlushInterval is how often Run writes the counts: the most a crash can
// forget.
const FlushInterval = time.Minute

// Run flushes every interval until ctx ends; report gets each failure.
// The caller flushes once more at shutdown, after the last message.
func (c *Counter) Run(ctx context.Context, interval time.Duration, report func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.Flush(); err != nil {
				report(err)
			}
		}
	}
}

// Suspended says whether, and since when, user is suspended.
func (c *Counter) Suspended(user string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.suspended[user]
	return at, ok
}

// Suspend stops user from sending (on) or lets it send again. It is
// written before it returns, and applies to the next MAIL, RCPT or DATA of
// every session, those already authenticated included, and to a message
// whose data is arriving (checked again before the queue commits it).
func (c *Counter) Suspend(user string, on bool) error {
	now := c.clock().UTC()
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSuspended)
		if !on {
			return b.Delete([]byte(user))
		}
		if b.Get([]byte(user)) != nil {
			return nil // suspended already; keep the first time
		}
		v, _ := now.MarshalText()
		return b.Put([]byte(user), v)
	})
	if err != nil {
		return fmt.Errorf("suspend %s: %w", user, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !on {
		delete(c.suspended, user)
	} else if _, ok := c.suspended[user]; !ok {
		c.suspended[user] = now
	}
	return nil
}
