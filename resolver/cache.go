package resolver

import (
	"context"
	"errors"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// ttlCache is an LRU whose entries each expire at their own time, read
// from the injected clock. (golang-lru's expirable cache has one TTL for
// all entries and a goroutine of its own.)
type ttlCache[T any] struct {
	lru *lru.Cache[string, cached[T]]
	now func() time.Time
}

type cached[T any] struct {
	value   T
	err     error
	expires time.Time
}

func newTTLCache[T any](size int, now func() time.Time) (*ttlCache[T], error) {
	l, err := lru.New[string, cached[T]](size)
	if err != nil {
		return nil, err
	}
	return &ttlCache[T]{lru: l, now: now}, nil
}

// get returns the live entry for key, or fills it. A fill that fails is
// remembered for failureTTL, so that a dead upstream is not asked again at
// once by every delivery (RFC 9520).
func (c *ttlCache[T]) get(key string, fill func() (T, time.Duration, error)) (T, bool, error) {
	now := c.now()
	if e, ok := c.lru.Get(key); ok && now.Before(e.expires) {
		return e.value, true, e.err
	}
	v, ttl, err := fill()
	if err != nil {
		ttl = failureTTL
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			ttl = 0 // the asker gave up; the upstream did not fail
		}
	}
	if ttl > 0 {
		c.lru.Add(key, cached[T]{value: v, err: err, expires: now.Add(ttl)})
	}
	return v, false, err
}

// purge empties the cache.
func (c *ttlCache[T]) purge() { c.lru.Purge() }

// len counts the entries, live or not.
func (c *ttlCache[T]) len() int { return c.lru.Len() }
