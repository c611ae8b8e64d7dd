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
	n := 0
	err := db.Update(func(tx *bbolt.Tx) error {
		n = 0
		b := tx.Bucket(stsBucket)
		if b == nil {
			return nil
		}
		var old [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var e CachedSTS
			// An entry that cannot be read is of no use either.
			if json.Unmarshal(v, &e) != nil || !now.Before(e.Expires) {
				old = append(old, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(old)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("mta-sts cache: prune: %w", err)
	}
	return n, nil
}
