package tlspolicy_test

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/postern/postern/tlspolicy"
)

// Expired MTA-STS policies leave the cache; those in force stay.
func TestSTSCacheIsPruned(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	entries := map[string]tlspolicy.CachedSTS{
		"gone.example": {ID: "1", Fetched: now.Add(-48 * time.Hour), Expires: now.Add(-time.Hour)},
		"kept.example": {ID: "2", Fetched: now.Add(-time.Hour), Expires: now.Add(time.Hour)},
	}
	db.Update(func(tx *bbolt.Tx) error {
		b, _ := tx.CreateBucketIfNotExists([]byte("mta-sts"))
		for d, e := range entries {
			v, _ := json.Marshal(e)
			b.Put([]byte(d), v)
		}
		return b.Put([]byte("garbled.example"), []byte("{"))
	})
	n, err := tlspolicy.PruneSTSCache(db, now)
	if err != nil || n != 2 {
		t.Fatalf("pruned %d (%v), want the expired and the garbled entry", n, err)
	}
	db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("mta-sts"))
		if b.Get([]byte("kept.example")) == nil || b.Stats().KeyN != 1 {
			t.Errorf("left %d entries; kept.example present: %v", b.Stats().KeyN, b.Get([]byte("kept.example")) != nil)
		}
		return nil
	})
}

// Aged-out downgrade memories leave the state database.
func TestDowngradeMemoryIsPruned(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	db.Update(func(tx *bbolt.Tx) error {
		b, _ := tx.CreateBucketIfNotExists([]byte("tls-memory"))
		for d, last := range map[string]time.Time{"old.example": now.Add(-31 * 24 * time.Hour), "recent.example": now.Add(-time.Hour)} {
			v, _ := json.Marshal(tlspolicy.Memory{Best: tlspolicy.SeenVerified, First: last, Last: last})
			b.Put([]byte(d), v)
		}
		return nil
	})
	if n, err := tlspolicy.PruneMemory(db, now.Add(-30*24*time.Hour)); err != nil || n != 1 {
		t.Fatalf("pruned %d (%v), want old.example's", n, err)
	}
	db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket([]byte("tls-memory")); b.Get([]byte("recent.example")) == nil || b.Get([]byte("old.example")) != nil {
			t.Error("wrong entry pruned")
		}
		return nil
	})
}
