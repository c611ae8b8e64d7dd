package tlspolicy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// PruneSTSCache deletes from db the cached MTA-STS policies that expired
// before now, and says how many. Past its max_age a policy is no longer in
// force (RFC 8461 5.1) and the cache ignores it; a domain that still
// publishes one has it fetched again at its next delivery. Without this,
// every domain ever written to would keep its entry for good.
func PruneSTSCache(db *bbolt.DB, now time.Time) (int, error) {
	n, err := pruneBucket(db, stsBucket, func(v []byte) bool {
		var e CachedSTS
		// An entry that cannot be read is of no use either.
		return json.Unmarshal(v, &e) != nil || !now.Before(e.Expires)
	})
	if err != nil {
		return 0, fmt.Errorf("mta-sts cache: prune: %w", err)
	}
	return n, nil
}

// PruneMemory deletes from db the downgrade memory of domains last reached
// before cutoff (now less tls.downgrade_memory_max_age): such memories are
// aged out, and a decision ignores them already.
func PruneMemory(db *bbolt.DB, cutoff time.Time) (int, error) {
	n, err := pruneBucket(db, memoryBucket, func(v []byte) bool {
		m, ok := decodeMemory(v)
		return !ok || m.Last.Before(cutoff)
	})
	if err != nil {
		return 0, fmt.Errorf("downgrade memory: prune: %w", err)
	}
	return n, nil
}

// pruneBucket deletes the entries of bucket that old says are old.
func pruneBucket(db *bbolt.DB, bucket []byte, old func(v []byte) bool) (int, error) {
	n := 0
	err := db.Update(func(tx *bbolt.Tx) error {
		n = 0
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		var keys [][]byte
		err := b.ForEach(func(k, v []byte) error {
			if old(v) {
				keys = append(keys, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	return n, err
}
