package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"sync"
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
}

// DefaultLimits are what an internet-facing submission port needs.
var DefaultLimits = Limits{FreeFailures: 3, Delay: time.Second, MaxDelay: 5 * time.Second,
	MaxFailures: 10, Window: 10 * time.Minute, Lockout: 15 * time.Minute}

// Verifier checks credentials against the store.
type Verifier struct {
	store  *Store
	limits Limits
	clock  func() time.Time

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
		cacheKey: key,
		verified: expirable.NewLRU[[32]byte, string](4096, nil, 5*time.Minute),
		failures: failures,
		dummy:    dummy,
	}
}

// Locked reports whether ip is refused for now.
func (v *Verifier) Locked(ip string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	rec, ok := v.failures.Get(ip)
	return ok && v.clock().Before(rec.lockedUntil)
}

// Verify checks name and password for a client at ip. On failure it returns
// ErrBadCredentials or ErrThrottled, and how long to wait before replying.
func (v *Verifier) Verify(ip, name, password string) (User, time.Duration, error) {
	if v.Locked(ip) {
		return User{}, 0, ErrThrottled
	}
	u, err := v.store.Get(name)
	if err != nil && !errors.Is(err, ErrNoSuchUser) {
		return User{}, 0, err
	}
	hash := u.Hash
	if err != nil {
		hash = v.dummy // spend the same time as for a real user
	}
	if v.check(name, password, hash) && err == nil {
		v.mu.Lock()
		v.failures.Remove(ip)
		v.mu.Unlock()
		return u, 0, nil
	}
	return User{}, v.fail(ip), ErrBadCredentials
}

func (v *Verifier) check(name, password, hash string) bool {
	mac := hmac.New(sha256.New, v.cacheKey)
	mac.Write([]byte(name))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var key [32]byte
	copy(key[:], mac.Sum(nil))
	if cached, ok := v.verified.Get(key); ok && cached == hash {
		return true
	}
	ok, err := checkPassword(hash, password)
	if ok && err == nil {
		v.verified.Add(key, hash)
	}
	return ok && err == nil
}

// SetLimits replaces the throttling limits (a configuration reload).
func (v *Verifier) SetLimits(l Limits) {
	v.mu.Lock()
	v.limits = l
	v.mu.Unlock()
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
