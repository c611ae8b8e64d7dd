package auth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/hashicorp/golang-lru/v2/expirable"
)

var (
	// ErrBadCredentials is the one answer for a wrong password and an
	// unknown user alike, so replies do not reveal which names exist.
	ErrBadCredentials = errors.New("invalid credentials")
	// ErrThrottled means the client's address failed too often lately.
	ErrThrottled = errors.New("too many failed authentications")
	// ErrBusy means no password hash could start before the caller's
	// deadline: too many checks are in flight.
	ErrBusy = errors.New("too many password checks in progress")
)

// Limits govern the response to failed authentications from one address.
type Limits struct {
	// After FreeFailures failures, each further failed attempt's reply is
	// delayed by Delay times the excess, up to MaxDelay.
	FreeFailures int
	Delay        time.Duration
	MaxDelay     time.Duration
	// After MaxFailures failures within Window, the address is refused
	// for Lockout.
	MaxFailures int
	Window      time.Duration
	Lockout     time.Duration
	// MaxConcurrentHashes bounds the password hashes computed at once
	// (each argon2id hash holds 19 MiB while it runs); 0 means
	// DefaultConcurrentHashes.
	MaxConcurrentHashes int
}

// DefaultConcurrentHashes is GOMAXPROCS, at most 4: more hashes at once
// than there are CPUs only queue for them while holding their memory, and
// 4 keeps the hashing memory near 76 MiB on a large machine. Successful
// checks are remembered, so only new logins and failures need a slot.
func DefaultConcurrentHashes() int {
	return max(1, min(runtime.GOMAXPROCS(0), 4))
}

// DefaultLimits are what an internet-facing submission port needs.
var DefaultLimits = Limits{FreeFailures: 3, Delay: time.Second, MaxDelay: 5 * time.Second,
	MaxFailures: 10, Window: 10 * time.Minute, Lockout: 15 * time.Minute}

// Verifier checks credentials against the store.
type Verifier struct {
	store  *Store
	limits Limits
	// file and dir are the other sources of users (SetFile,
	// SetDirectory), under mu; nil when not configured.
	file *FileUsers
	dir  Directory
	// dirVerified remembers the directory's recent successes, as
	// verified does the local ones; dirSlots bounds the directory
	// checks in flight (each holds a connection to the directory).
	dirVerified *expirable.LRU[[32]byte, User]
	dirSlots    chan struct{}
	clock       func() time.Time

	// Argon2id costs ~20 ms of CPU by design; a busy application that opens
	// a connection per burst would pay that every time. Successful checks
	// are remembered for a few minutes under an HMAC of name and password
	// with a key that lives only in this process, tied to the stored hash,
	// so a password change or deletion takes effect at once.
	cacheKey []byte
	verified *expirable.LRU[[32]byte, string]

	mu       sync.Mutex
	failures *lru.Cache[string, *failureRecord]
	dummy    string
	// hashSlots holds one token per hash in flight; SetLimits may replace
	// it, and a holder gives its token back to the channel it took it from.
	hashSlots chan struct{}
	waiting   atomic.Int64 // checks waiting for a slot
	// checkPassword is the hash comparison (a field so that tests can
	// watch how many run at once).
	checkPassword func(hash, password string) (bool, error)
}

type failureRecord struct {
	count       int
	first       time.Time
	lockedUntil time.Time
}

// NewVerifier builds a verifier; clock may be nil for the wall clock.
func NewVerifier(store *Store, limits Limits, clock func() time.Time) *Verifier {
	if clock == nil {
		clock = time.Now
	}
	key := make([]byte, 32)
	rand.Read(key)
	failures, _ := lru.New[string, *failureRecord](65536)
	dummy, _ := HashPassword("postern-dummy-password")
	return &Verifier{
		store: store, limits: limits, clock: clock,
		cacheKey:      key,
		verified:      expirable.NewLRU[[32]byte, string](4096, nil, 5*time.Minute),
		dirVerified:   expirable.NewLRU[[32]byte, User](4096, nil, 5*time.Minute),
		dirSlots:      make(chan struct{}, maxDirectoryChecks),
		failures:      failures,
		dummy:         dummy,
		hashSlots:     newSlots(limits.MaxConcurrentHashes),
		checkPassword: checkPassword,
	}
}

func newSlots(n int) chan struct{} {
	if n <= 0 {
		n = DefaultConcurrentHashes()
	}
	return make(chan struct{}, n)
}

// Locked reports whether ip is refused for now.
func (v *Verifier) Locked(ip string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	rec, ok := v.failures.Get(ip)
	return ok && v.clock().Before(rec.lockedUntil)
}

// Verify checks name and password for a client at ip. On failure it returns
// ErrBadCredentials or ErrThrottled, and how long to wait before replying;
// or ErrBusy when no hash could start before ctx ended.
func (v *Verifier) Verify(ctx context.Context, ip, name, password string) (User, time.Duration, error) {
	if v.Locked(ip) {
		return User{}, 0, ErrThrottled
	}
	u, found, err := v.lookup(name)
	if err != nil {
		return User{}, 0, err
	}
	if !found {
		if dir := v.directory(); dir != nil {
			return v.verifyInDirectory(ctx, dir, ip, name, password)
		}
	}
	hash := u.Hash
	if !found {
		hash = v.dummy // spend the same time, and wait for the same slot, as for a real user
	}
	ok, cerr := v.check(ctx, ip, name, password, hash)
	if cerr != nil {
		return User{}, 0, cerr
	}
	if ok && found {
		v.mu.Lock()
		v.failures.Remove(ip)
		v.mu.Unlock()
		return u, 0, nil
	}
	return User{}, v.fail(ip), ErrBadCredentials
}

// check compares password with hash. A remembered success costs no hash;
// any other check waits for a hash slot, whether the user exists or not,
// so neither memory nor timing depends on the name. While it waited, the
// address may have been locked out by its other connections' failures: a
// flood from one address then ends without computing their hashes.
func (v *Verifier) check(ctx context.Context, ip, name, password, hash string) (bool, error) {
	key := v.credentialKey(name, password)
	if cached, ok := v.verified.Get(key); ok && cached == hash {
		return true, nil
	}
	v.mu.Lock()
	slots := v.hashSlots
	v.mu.Unlock()
	v.waiting.Add(1)
	select {
	case slots <- struct{}{}:
		v.waiting.Add(-1)
	case <-ctx.Done():
		v.waiting.Add(-1)
		return false, fmt.Errorf("waiting for a hash slot: %w (%w)", ErrBusy, context.Cause(ctx))
	}
	defer func() {
		// argon2 allocates its memory afresh for every hash, and under a
		// flood the collector's pacing would let several generations of
		// these 19 MiB blocks pile up before it runs (the heap may double
		// between collections): 8 slots reached 445 MB of RSS. With
		// checks waiting, the finished hash is collected before its slot
		// is handed on, so memory stays near slots × 19 MiB. The blocks
		// hold no pointers; the collection costs a few milliseconds
		// against the hash's tens.
		if v.waiting.Load() > 0 {
			runtime.GC()
		}
		<-slots
	}()
	if v.Locked(ip) {
		return false, ErrThrottled
	}
	// A burst of connections from one application logs in with the same
	// credentials at once; the first to get a slot proves them for the
	// rest, which then need no hash (and no 19 MiB) of their own.
	if cached, ok := v.verified.Get(key); ok && cached == hash {
		return true, nil
	}
	ok, err := v.checkPassword(hash, password)
	if ok && err == nil {
		v.verified.Add(key, hash)
	}
	return ok && err == nil, nil
}

// SetLimits replaces the throttling limits (a configuration reload).
func (v *Verifier) SetLimits(l Limits) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if l.MaxConcurrentHashes != v.limits.MaxConcurrentHashes {
		// Checks in flight finish on the old slots: for a moment both
		// bounds apply, never neither.
		v.hashSlots = newSlots(l.MaxConcurrentHashes)
	}
	v.limits = l
}

func (v *Verifier) fail(ip string) time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.clock()
	rec, ok := v.failures.Get(ip)
	limits := v.limits
	if !ok || now.Sub(rec.first) > limits.Window && now.After(rec.lockedUntil) {
		rec = &failureRecord{first: now}
		v.failures.Add(ip, rec)
	}
	rec.count++
	if limits.MaxFailures > 0 && rec.count >= limits.MaxFailures {
		rec.lockedUntil = now.Add(limits.Lockout)
	}
	excess := rec.count - limits.FreeFailures
	if excess <= 0 {
		return 0
	}
	return min(time.Duration(excess)*limits.Delay, limits.MaxDelay)
}
