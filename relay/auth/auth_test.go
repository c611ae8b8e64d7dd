package auth

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/crypto/bcrypt"
)

func newStore(t testing.TB) *Store {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := NewStore(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerify(t *testing.T) {
	s := newStore(t)
	if err := s.Add("app", "s3cret", []string{"*@example.org"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add("app", "other", nil); !errors.Is(err, ErrUserExists) {
		t.Fatalf("duplicate add: %v", err)
	}
	v := NewVerifier(s, DefaultLimits, nil)
	u, _, err := v.Verify(context.Background(), "192.0.2.1", "app", "s3cret")
	if err != nil || u.Name != "app" {
		t.Fatalf("good password: %v", err)
	}
	// Cached now; a password change must still invalidate it at once.
	if err := s.SetPassword("app", "n3w"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := v.Verify(context.Background(), "192.0.2.1", "app", "s3cret"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("old password after change: %v", err)
	}
	if _, _, err := v.Verify(context.Background(), "192.0.2.1", "app", "n3w"); err != nil {
		t.Fatalf("new password: %v", err)
	}
	if _, _, err := v.Verify(context.Background(), "192.0.2.1", "ghost", "n3w"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("unknown user must look like a bad password: %v", err)
	}
	s.Delete("app")
	if _, _, err := v.Verify(context.Background(), "192.0.2.1", "app", "n3w"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("deleted user still verifies: %v", err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("list after delete: %v", list)
	}
}

func TestThrottleDelaysThenLocksOut(t *testing.T) {
	s := newStore(t)
	s.Add("app", "pw", nil)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	limits := Limits{FreeFailures: 2, Delay: time.Second, MaxDelay: 3 * time.Second, MaxFailures: 5, Window: time.Minute, Lockout: 10 * time.Minute}
	v := NewVerifier(s, limits, func() time.Time { return now })
	var delays []time.Duration
	for i := 0; i < 5; i++ {
		_, d, err := v.Verify(context.Background(), "198.51.100.7", "app", "wrong")
		if !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("attempt %d: %v", i, err)
		}
		delays = append(delays, d)
	}
	want := []time.Duration{0, 0, time.Second, 2 * time.Second, 3 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", delays, want)
		}
	}
	if _, _, err := v.Verify(context.Background(), "198.51.100.7", "app", "pw"); !errors.Is(err, ErrThrottled) {
		t.Fatalf("locked-out address with the right password: %v", err)
	}
	if _, _, err := v.Verify(context.Background(), "198.51.100.8", "app", "pw"); err != nil {
		t.Fatalf("another address is not locked: %v", err)
	}
	now = now.Add(11 * time.Minute)
	if _, _, err := v.Verify(context.Background(), "198.51.100.7", "app", "pw"); err != nil {
		t.Fatalf("lockout did not lapse: %v", err)
	}
}

func TestMaySend(t *testing.T) {
	u := User{AllowFrom: []string{"*@example.org", "billing@shop.example"}}
	for from, want := range map[string]bool{
		"a@example.org": true, "A@EXAMPLE.ORG": true, "billing@shop.example": true,
		"a@evil.example": false, "a@sub.example.org": false, "": false,
	} {
		if got := u.MaySend(from); got != want {
			t.Errorf("MaySend(%q) = %v", from, got)
		}
	}
	if !(User{}).MaySend("") {
		t.Error("unrestricted user may use the null sender")
	}
}

func TestNamesAndHashes(t *testing.T) {
	for _, bad := range []string{"", "a b", "x\r\nBcc: y", "(evil)", "-lead"} {
		if ValidateName(bad) == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	h, _ := HashPassword("pw")
	if ok, err := checkPassword(h, "pw"); !ok || err != nil {
		t.Fatal("argon2id round trip")
	}
	// Imported users may carry bcrypt hashes.
	bh, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if ok, _ := checkPassword(string(bh), "pw"); !ok {
		t.Error("bcrypt hash rejected")
	}
	if ok, _ := checkPassword(string(bh), "nope"); ok {
		t.Error("bcrypt wrong password accepted")
	}
	if _, err := checkPassword("$argon2id$garbage", "pw"); err == nil {
		t.Error("malformed hash accepted")
	}
}

// BenchmarkFailedAuth compares the cost of a wrong password for a real user
// with that of an unknown user: the dummy hash makes them alike, so timing
// does not tell which user names exist.
//
//	go test ./relay/auth -run '^$' -bench FailedAuth -benchtime 20x -count 5
func BenchmarkFailedAuth(b *testing.B) {
	s := newStore(b)
	if err := s.Add("app", "s3cret", nil); err != nil {
		b.Fatal(err)
	}
	v := NewVerifier(s, Limits{}, nil)
	for _, name := range []string{"app", "ghost"} {
		b.Run(map[string]string{"app": "wrong-password", "ghost": "unknown-user"}[name], func(b *testing.B) {
			for b.Loop() {
				if _, _, err := v.Verify(context.Background(), "192.0.2.1", name, "guess"); !errors.Is(err, ErrBadCredentials) {
					b.Fatal(err)
				}
			}
		})
	}
}

// countingChecks wraps v's password comparison to record the most hashes
// in flight at once and how many ran.
func countingChecks(v *Verifier) (peak, calls *atomic.Int64) {
	var inFlight atomic.Int64
	peak, calls = new(atomic.Int64), new(atomic.Int64)
	real := v.checkPassword
	v.checkPassword = func(hash, password string) (bool, error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		calls.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		return real(hash, password)
	}
	return peak, calls
}

// A flood of failed AUTHs, for real and unknown users alike, computes at
// most MaxConcurrentHashes argon2id hashes at once (each holds 19 MiB), and
// every one of them does wait for a slot: an unknown user is not answered
// sooner (issue 14 item 10).
func TestHashesInFlightAreBounded(t *testing.T) {
	s := newStore(t)
	if err := s.Add("app", "s3cret", nil); err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(s, Limits{MaxConcurrentHashes: 2}, nil)
	peak, calls := countingChecks(v)
	var wg sync.WaitGroup
	for i := range 24 {
		name := []string{"app", "ghost"}[i%2]
		wg.Go(func() {
			if _, _, err := v.Verify(context.Background(), fmt.Sprintf("192.0.2.%d", i), name, "guess"); !errors.Is(err, ErrBadCredentials) {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	wg.Wait()
	if peak.Load() > 2 {
		t.Errorf("%d hashes at once, want at most 2", peak.Load())
	}
	if calls.Load() != 24 {
		t.Errorf("%d hashes for 24 failed attempts: unknown users must cost one too", calls.Load())
	}
}

// An application opening 16 connections at once logs in 16 times with
// the same credentials: the first check to get a slot proves them for the
// rest, so the burst costs at most one hash per slot, not 16 (each holds
// 19 MiB: the burst was the daemon's peak memory under load, issue 18).
func TestBurstOfOneCredentialHashesOncePerSlot(t *testing.T) {
	s := newStore(t)
	if err := s.Add("app", "s3cret", nil); err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(s, Limits{MaxConcurrentHashes: 2}, nil)
	_, calls := countingChecks(v)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if _, _, err := v.Verify(context.Background(), fmt.Sprintf("192.0.2.%d", i), "app", "s3cret"); err != nil {
				t.Errorf("login %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if calls.Load() > 2 {
		t.Errorf("%d hashes for a burst of 16 logins with one credential, want at most 2 (one per slot)", calls.Load())
	}
	// A wrong password in the same burst is never taken for the right one.
	if _, _, err := v.Verify(context.Background(), "192.0.2.99", "app", "s3cret!"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("wrong password after the burst: %v", err)
	}
}

// A check that cannot get a hash slot before its deadline fails with
// ErrBusy (the session's 454 4.7.0), counts no failure against the
// address, and takes no slot.
func TestBusyWhenNoHashSlotBeforeDeadline(t *testing.T) {
	s := newStore(t)
	s.Add("app", "s3cret", nil)
	v := NewVerifier(s, Limits{MaxConcurrentHashes: 1, MaxFailures: 1, Lockout: time.Hour, Window: time.Hour}, nil)
	started, hold := make(chan struct{}), make(chan struct{})
	real := v.checkPassword
	v.checkPassword = func(hash, password string) (bool, error) {
		if password == "slow" {
			close(started)
			<-hold
		}
		return real(hash, password)
	}
	done := make(chan error)
	go func() {
		_, _, err := v.Verify(context.Background(), "192.0.2.1", "app", "slow")
		done <- err
	}()
	<-started
	expired, cancel := context.WithDeadline(context.Background(), time.Now())
	defer cancel()
	for _, name := range []string{"app", "ghost"} {
		if _, _, err := v.Verify(expired, "192.0.2.2", name, "s3cret"); !errors.Is(err, ErrBusy) {
			t.Fatalf("%s with every slot taken: %v, want ErrBusy", name, err)
		}
	}
	close(hold)
	if err := <-done; !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("slow check: %v", err)
	}
	if v.Locked("192.0.2.2") {
		t.Error("a busy answer counted as a failure")
	}
	if _, _, err := v.Verify(context.Background(), "192.0.2.2", "app", "s3cret"); err != nil {
		t.Fatalf("after the slot came free: %v", err)
	}
}

// Raising or lowering the bound on reload takes effect for new checks.
func TestHashSlotsFollowReload(t *testing.T) {
	s := newStore(t)
	s.Add("app", "s3cret", nil)
	v := NewVerifier(s, Limits{MaxConcurrentHashes: 1}, nil)
	v.SetLimits(Limits{MaxConcurrentHashes: 3})
	peak, _ := countingChecks(v)
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() { v.Verify(context.Background(), fmt.Sprintf("192.0.2.%d", i), "app", "guess") })
	}
	wg.Wait()
	if cap(v.hashSlots) != 3 || peak.Load() > 3 {
		t.Fatalf("slots %d, peak %d after reload to 3", cap(v.hashSlots), peak.Load())
	}
}
