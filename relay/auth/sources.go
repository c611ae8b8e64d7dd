package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrUnavailable means a user directory could not answer (down,
// unreachable, TLS failure, timeout): the client must hear a temporary
// failure (454 4.7.0), never that its password is wrong.
var ErrUnavailable = errors.New("user directory unavailable")

// A Directory checks passwords it keeps itself (LDAP). Authenticate
// returns the user with its sender patterns, or ErrNoSuchUser,
// ErrBadCredentials, or an error wrapping ErrUnavailable.
type Directory interface {
	Authenticate(ctx context.Context, name, password string) (User, error)
	// String names the directory for logs and "user list" (no secrets).
	String() string
}

// maxDirectoryChecks bounds the directory checks in flight: each holds a
// connection to the directory, and a flood of logins must not become one
// against the directory.
const maxDirectoryChecks = 16

// SetFile makes the users of f, which may be nil, the first source.
func (v *Verifier) SetFile(f *FileUsers) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.file = f
}

// SetDirectory makes d, which may be nil, the last source. What the
// previous directory confirmed is forgotten.
func (v *Verifier) SetDirectory(d Directory) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.dir = d
	v.dirVerified.Purge()
}

func (v *Verifier) directory() Directory {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.dir
}

// lookup finds a user that has a local hash: in the users file first, then
// in the built-in store.
func (v *Verifier) lookup(name string) (User, bool, error) {
	v.mu.Lock()
	file := v.file
	v.mu.Unlock()
	if file != nil {
		if u, ok := file.Get(name); ok {
			return u, true, nil
		}
	}
	u, err := v.store.Get(name)
	if errors.Is(err, ErrNoSuchUser) {
		return User{}, false, nil
	}
	if err != nil {
		return User{}, false, err
	}
	return u, true, nil
}

// verifyInDirectory checks a name no local source knows against the
// directory. A name the directory does not know either then costs a dummy
// hash in a hash slot, as it does without a directory, so that it answers
// no sooner than a wrong password for a local user.
func (v *Verifier) verifyInDirectory(ctx context.Context, dir Directory, ip, name, password string) (User, time.Duration, error) {
	if ValidateName(name) != nil {
		// The name goes into Received headers and logs: a directory
		// user's name must keep to the alphabet a local one does.
		// Refused as an unknown name is, at the same cost.
		if _, cerr := v.check(ctx, ip, name, password, v.dummy); cerr != nil {
			return User{}, 0, cerr
		}
		return User{}, v.fail(ip), ErrBadCredentials
	}
	// Directories match names without regard to case (uid and
	// sAMAccountName are caseIgnoreMatch, RFC 4519 2.39): "ALICE" binds as
	// alice's entry with alice's password. The per-credential limits, the
	// suspension, the cache and the Received header all key on the name,
	// so every spelling is folded to one; and a local user shadows every
	// spelling of its name, not just the one it is written in.
	if folded := strings.ToLower(name); folded != name {
		_, shadowed, err := v.lookup(folded)
		if err != nil {
			return User{}, 0, err
		}
		if shadowed {
			if _, cerr := v.check(ctx, ip, name, password, v.dummy); cerr != nil {
				return User{}, 0, cerr
			}
			return User{}, v.fail(ip), ErrBadCredentials
		}
		name = folded
	}
	key := v.credentialKey(name, password)
	if u, ok := v.dirVerified.Get(key); ok {
		return u, 0, nil
	}
	select {
	case v.dirSlots <- struct{}{}:
	case <-ctx.Done():
		return User{}, 0, fmt.Errorf("waiting for a directory slot: %w (%w)", ErrBusy, context.Cause(ctx))
	}
	if v.Locked(ip) {
		<-v.dirSlots
		return User{}, 0, ErrThrottled
	}
	u, err := dir.Authenticate(ctx, name, password)
	<-v.dirSlots
	switch {
	case err == nil:
		u.Source = SourceLDAP
		v.dirVerified.Add(key, u)
		v.mu.Lock()
		v.failures.Remove(ip)
		v.mu.Unlock()
		return u, 0, nil
	case errors.Is(err, ErrNoSuchUser):
		if _, cerr := v.check(ctx, ip, name, password, v.dummy); cerr != nil {
			return User{}, 0, cerr
		}
		return User{}, v.fail(ip), ErrBadCredentials
	case errors.Is(err, ErrBadCredentials):
		// The bind took milliseconds; an unknown name costs a hash.
		// Spend the same, or the reply's timing tells which names the
		// directory has.
		if _, cerr := v.check(ctx, ip, name, password, v.dummy); cerr != nil {
			return User{}, 0, cerr
		}
		return User{}, v.fail(ip), err // may say why, for the log; never sent
	case errors.Is(err, ErrUnavailable):
		// Not the client's fault: no failure counted.
		return User{}, 0, err
	}
	return User{}, 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// credentialKey names a name and password in the caches of successful
// checks, under a key that lives only in this process.
func (v *Verifier) credentialKey(name, password string) [32]byte {
	mac := hmac.New(sha256.New, v.cacheKey)
	mac.Write([]byte(name))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var key [32]byte
	copy(key[:], mac.Sum(nil))
	return key
}

// Users lists the users of the local sources in the order they are
// consulted, by name within each: the file's, then the store's. A store
// user that a file user of the same name shadows is listed with Source
// "store (shadowed by file)": it cannot log in.
func (v *Verifier) Users() ([]User, error) {
	v.mu.Lock()
	file := v.file
	v.mu.Unlock()
	return ListUsers(file, v.store)
}

// ListUsers lists the users of file (may be nil) and store, as Users does.
func ListUsers(file *FileUsers, store *Store) ([]User, error) {
	var out []User
	seen := map[string]bool{}
	if file != nil {
		for _, u := range file.List() {
			seen[u.Name] = true
			out = append(out, u)
		}
	}
	stored, err := store.List()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(stored, func(a, b User) int { return strings.Compare(a.Name, b.Name) })
	for _, u := range stored {
		if seen[u.Name] {
			u.Source = SourceStore + " (shadowed by file)"
		}
		out = append(out, u)
	}
	return out, nil
}
