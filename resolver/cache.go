package resolver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// ttlCache is an LRU whose entries each expire at their own time, read
// from the injected clock. (golang-lru's expirable cache has one TTL for
// all entries and a goroutine of its own.) Concurrent misses of one key
// share one fill.
type ttlCache[T any] struct {
	lru    *lru.Cache[string, cached[T]]
	now    func() time.Time
	flight singleflight.Group
	// budget bounds one shared fill: it runs under a context of its own,
	// not under any caller's, so that one caller giving up (or running out
	// of time) fails nobody else (issue 15, item 8).
	budget time.Duration
	// waiting counts the callers waiting for a shared fill (for tests).
	waiting atomic.Int64
}

type cached[T any] struct {
	value   T
	err     error
	expires time.Time
}

func newTTLCache[T any](size int, now func() time.Time, budget time.Duration) (*ttlCache[T], error) {
	l, err := lru.New[string, cached[T]](size)
	if err != nil {
		return nil, err
	}
	return &ttlCache[T]{lru: l, now: now, budget: budget}, nil
}

// errBudget is why a shared fill's context ends when the upstream is too
// slow to finish within the budget: an upstream failure, remembered like
// any other (context.DeadlineExceeded would read as a caller giving up).
var errBudget = errors.New("the upstream took longer than the resolution budget")

// get returns the live entry for key, or fills it. The fill runs once for
// all concurrent callers, under a context detached from theirs (it keeps
// their values, for tracing, but not their deadlines) and bounded by the
// budget; each caller stops waiting when its own ctx ends, and the fill
// goes on for the others and for the cache. A fill that fails is
// remembered for failureTTL, so that a dead upstream is not asked again at
// once by every delivery (RFC 9520); a fill cut short by a context that is
// not the budget's is not remembered: nobody upstream failed.
func (c *ttlCache[T]) get(ctx context.Context, key string, fill func(context.Context) (T, time.Duration, error)) (T, bool, error) {
	if v, err, ok := c.lookup(key); ok {
		return v, true, err
	}
	v, err := c.fill(ctx, key, fill)
	return v, false, err
}

// lookup returns the live entry for key, if there is one. (Callers on a
// hot path check it first, so that a hit does not allocate the closure a
// fill needs.)
func (c *ttlCache[T]) lookup(key string) (T, error, bool) {
	if e, ok := c.lru.Get(key); ok && c.now().Before(e.expires) {
		return e.value, e.err, true
	}
	var zero T
	return zero, nil, false
}

// fill runs (or joins) the shared fill of key; see get.
func (c *ttlCache[T]) fill(ctx context.Context, key string, fill func(context.Context) (T, time.Duration, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("%w: %w", ErrTemporary, context.Cause(ctx))
	}
	ch := c.flight.DoChan(key, func() (any, error) {
		start := c.now()
		sctx, cancel := context.WithTimeoutCause(context.WithoutCancel(ctx), c.budget, errBudget)
		defer cancel()
		v, ttl, err := fill(sctx)
		c.put(key, v, ttl, err, start)
		return v, err
	})
	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	select {
	case r := <-ch:
		v, _ := r.Val.(T)
		return v, r.Err
	case <-ctx.Done():
		return zero, fmt.Errorf("%w: stopped waiting: %w", ErrTemporary, context.Cause(ctx))
	}
}

// put remembers a fill's outcome from start for ttl, a failure for
// failureTTL unless it is a cancellation.
func (c *ttlCache[T]) put(key string, v T, ttl time.Duration, err error, start time.Time) {
	if err != nil {
		ttl = failureTTL
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			ttl = 0 // someone gave up; the upstream did not fail
		}
	}
	if ttl > 0 {
		c.lru.Add(key, cached[T]{value: v, err: err, expires: start.Add(ttl)})
	}
}

// purge empties the cache.
func (c *ttlCache[T]) purge() { c.lru.Purge() }

// len counts the entries, live or not.
func (c *ttlCache[T]) len() int { return c.lru.Len() }
