package quota

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

type clock struct{ now time.Time }

func (c *clock) Now() time.Time          { return c.now }
func (c *clock) advance(d time.Duration) { c.now = c.now.Add(d) }

func openDB(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func refusal(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Kind
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

// TestWindowSlides: the limits count the last 60 minutes, a minute at a
// time; a message's recipients count against the recipient limit as RCPT
// adds them.
func TestWindowSlides(t *testing.T) {
	clk := &clock{time.Date(2026, 3, 1, 10, 0, 30, 0, time.UTC)}
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	c, err := Open(db, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	lim := Limits{MessagesPerHour: 3, RecipientsPerHour: 5}
	for i := 0; i < 3; i++ {
		if err := c.CheckMail("app", lim); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		c.Add("app", 1)
		clk.advance(10 * time.Minute)
	}
	// 10:30:30; messages at 10:00, 10:10, 10:20.
	if got := refusal(c.CheckMail("app", lim)); got != RefusedMessages {
		t.Fatalf("fourth message in the hour: %q", got)
	}
	if got := refusal(c.CheckMail("other", lim)); got != "" {
		t.Fatalf("another credential is limited too: %q", got)
	}
	// Recipients: 3 used, so 2 more in one message, not a third.
	if refusal(c.CheckRecipient("app", lim, 0)) != "" || refusal(c.CheckRecipient("app", lim, 1)) != "" {
		t.Fatal("recipients under the limit refused")
	}
	if got := refusal(c.CheckRecipient("app", lim, 2)); got != RefusedRecipients {
		t.Fatalf("sixth recipient in the hour: %q", got)
	}
	clk.advance(30 * time.Minute) // 11:00:30: the 10:00 message has left the window
	if err := c.CheckMail("app", lim); err != nil {
		t.Fatalf("after the first message left the window: %v", err)
	}
	if m, r := c.Used("app"); m != 2 || r != 2 {
		t.Fatalf("used %d messages %d recipients, want 2 and 2", m, r)
	}
	if err := c.CheckMail("app", Limits{}); err != nil {
		t.Fatalf("unlimited: %v", err)
	}
	// A recipient limit already reached refuses at MAIL: the message could have no recipient.
	c.Add("app", 3)
	if got := refusal(c.CheckMail("app", Limits{RecipientsPerHour: 5})); got != RefusedRecipients {
		t.Fatalf("MAIL with no recipient left: %q", got)
	}
}

// TestWindowSurvivesRestart: flushed counts and suspensions are there
// after reopening the database; a crash loses only what was not flushed.
func TestWindowSurvivesRestart(t *testing.T) {
	clk := &clock{time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "state.db")
	db := openDB(t, path)
	c, _ := Open(db, clk.Now)
	c.Add("app", 4)
	clk.advance(time.Minute)
	c.Add("app", 6)
	if err := c.Suspend("leaked", true); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.Add("app", 100) // after the last flush: a crash forgets it
	db.Close()

	db = openDB(t, path)
	defer db.Close()
	c, err := Open(db, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if m, r := c.Used("app"); m != 2 || r != 10 {
		t.Fatalf("after a restart: %d messages %d recipients, want 2 and 10", m, r)
	}
	if got := refusal(c.CheckMail("app", Limits{MessagesPerHour: 2})); got != RefusedMessages {
		t.Fatalf("the window was reset by the restart: %q", got)
	}
	if got := refusal(c.CheckMail("leaked", Limits{})); got != RefusedSuspended {
		t.Fatalf("suspension lost: %q", got)
	}
	if got := refusal(c.CheckRecipient("leaked", Limits{}, 0)); got != RefusedSuspended {
		t.Fatalf("RCPT of a suspended credential: %q", got)
	}
	if err := c.Suspend("leaked", false); err != nil || refusal(c.CheckMail("leaked", Limits{})) != "" {
		t.Fatalf("resume: %v", err)
	}
	// An hour later the record is dropped, from memory and, on flush, from disk.
	clk.advance(2 * time.Hour)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketVolume).Get([]byte("app")); v != nil {
			t.Errorf("stale volume kept: %s", v)
		}
		return nil
	})
}

// TestRunFlushes: the periodic flush writes without being asked, and
// stops with its context.
func TestRunFlushes(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "state.db"))
	defer db.Close()
	c, _ := Open(db, nil)
	c.Add("app", 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, time.Millisecond, func(err error) { t.Error(err) }); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var v []byte
		db.View(func(tx *bolt.Tx) error { v = tx.Bucket(bucketVolume).Get([]byte("app")); return nil })
		if v != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run never flushed")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}

// BenchmarkAdd is what a queued message costs the counter: no write, no
// fsync (those are Flush's, once a minute).
func BenchmarkAdd(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	c, _ := Open(db, nil)
	lim := Limits{MessagesPerHour: 1 << 30, RecipientsPerHour: 1 << 30}
	b.ResetTimer()
	for b.Loop() {
		c.CheckMail("app", lim)
		c.CheckRecipient("app", lim, 0)
		c.Add("app", 1)
	}
}

// BenchmarkFlush is the once-a-minute write: 1,000 credentials that sent
// in the last minute, one transaction, one fsync.
func BenchmarkFlush(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	c, _ := Open(db, nil)
	for b.Loop() {
		for u := 0; u < 1000; u++ {
			c.Add(fmt.Sprintf("user%d", u), 1)
		}
		if err := c.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}
