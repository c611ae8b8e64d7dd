package auth

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postern/postern/relay/auth/ldaptest"
)

// TestDirectoryNameIsOneIdentity (review of issue 19): the directory
// matches names without regard to case (uid and sAMAccountName are
// caseIgnoreMatch), so "alice", "ALICE" and "Alice" all bind as the same
// entry with the same password. The per-credential limits, the
// suspension ("postern user suspend alice") and the Received header all
// key on User.Name: each spelling must come back as one name, or a leaked
// password sends 2^len(name) times the hourly limit and walks past a
// suspension by changing one letter's case.
func TestDirectoryNameIsOneIdentity(t *testing.T) {
	srv := ldaptest.Start(t, people)
	l := newLDAP(t, LDAPConfig{URL: srv.TLSURL, RootCAs: srv.CA.Pool(), SenderAttribute: "mail"})
	v := NewVerifier(newStore(t), DefaultLimits, nil)
	v.SetDirectory(l)
	for _, name := range []string{"alice", "ALICE", "aLiCe"} {
		u, _, err := v.Verify(context.Background(), "192.0.2.1", name, "alice-pw")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if u.Name != "alice" {
			t.Errorf("AUTH as %q is user %q: a second identity for the limits and the suspension of alice", name, u.Name)
		}
	}
}

// TestLocalUserShadowsDirectoryInAnyCase (review of issue 19): a name in
// the users file shadows the directory's (sources.go); the operator who
// gives "alice" a file line (a narrower allow_from, a lower limit, a
// password of its own) must not find "ALICE" logging in as the
// directory's alice, with the directory's senders and password.
func TestLocalUserShadowsDirectoryInAnyCase(t *testing.T) {
	srv := ldaptest.Start(t, people)
	l := newLDAP(t, LDAPConfig{URL: srv.TLSURL, RootCAs: srv.CA.Pool(), SenderAttribute: "mail"})
	argon, _ := testHashes(t)
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("alice "+argon+" allow_from=alice@example.org messages_per_hour=10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadUsersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(newStore(t), Limits{}, nil)
	v.SetFile(f)
	v.SetDirectory(l)
	if _, _, err := v.Verify(context.Background(), "192.0.2.1", "alice", "alice-pw"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("alice with the directory's password: %v (the file's alice shadows it)", err)
	}
	u, _, err := v.Verify(context.Background(), "192.0.2.1", "ALICE", "alice-pw")
	if !errors.Is(err, ErrBadCredentials) {
		t.Errorf("ALICE with the directory's password: %+v %v; the file's alice must shadow every spelling", u, err)
	}
}

// TestUsersFileRefusesRuinousHashCosts (review of issue 19): a users-file
// hash is compared on every login that is not a remembered success, in one
// of a few hash slots, and the comparison cannot be interrupted. bcrypt's
// cost 31 is 2^31 rounds (about 36 hours here at cost 12 = 0.25 s): four
// wrong passwords for that user hold every slot for a day and a half, and
// no one logs in. argon2id's t=64 at m=1 GiB is over a minute a try. Such
// a hash must be refused when the file is read, naming the line.
func TestUsersFileRefusesRuinousHashCosts(t *testing.T) {
	// bcrypt.Cost reads only the header; the rest need only be the right length.
	bcrypt31 := "$2b$31$" + strings.Repeat("A", 53)
	argonHuge := "$argon2id$v=19$m=1048576,t=64,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5"
	for _, hash := range []string{bcrypt31, argonHuge} {
		_, err := ParseUsers(strings.NewReader("app " + hash + "\n"))
		if err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%s accepted (%v): each wrong password for app would hold a hash slot for %s", hash[:12], err, map[bool]string{true: "36 hours", false: "a minute"}[hash == bcrypt31])
		}
	}
	// What systems really use still loads: bcrypt 12-14, RFC 9106's
	// second choice (64 MiB, t=3, p=4), libsodium's "moderate".
	for _, hash := range []string{
		"$2b$14$" + strings.Repeat("A", 53),
		"$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5",
		"$argon2id$v=19$m=262144,t=3,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5",
	} {
		if _, err := ParseUsers(strings.NewReader("app " + hash + "\n")); err != nil {
			t.Errorf("%s: %v", hash[:20], err)
		}
	}
}

// answeringDirectory knows one name, with one password.
type answeringDirectory struct{}

func (answeringDirectory) Authenticate(_ context.Context, name, password string) (User, error) {
	switch {
	case name != "known":
		return User{}, ErrNoSuchUser
	case password != "right":
		return User{}, ErrBadCredentials
	}
	return User{Name: name, AllowFrom: []string{"known@example.org"}}, nil
}
func (answeringDirectory) String() string { return "test directory" }

// TestDirectoryWrongPasswordCostsAsAnUnknownName (review of issue 19): a
// name the directory does not know costs a dummy hash, so that it answers
// no sooner than a wrong password for a local user; but a wrong password
// for a directory user cost only the bind, a few milliseconds, against
// the tens of the hash. The reply's timing told which names the directory
// has. Both must cost the same.
func TestDirectoryWrongPasswordCostsAsAnUnknownName(t *testing.T) {
	v := NewVerifier(newStore(t), Limits{}, nil)
	v.SetDirectory(answeringDirectory{})
	hashes := map[string]int{}
	current := ""
	v.checkPassword = func(hash, pw string) (bool, error) { hashes[current]++; return checkPassword(hash, pw) }
	for _, name := range []string{"known", "unknown"} {
		current = name
		if _, _, err := v.Verify(context.Background(), "192.0.2.9", name, "wrong"); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if hashes["known"] != hashes["unknown"] {
		t.Errorf("a wrong password for a directory user cost %d hashes, an unknown name %d: the timing tells them apart",
			hashes["known"], hashes["unknown"])
	}
}

// TestLDAPServerSizeLimitIsNotUniqueness (review of issue 19): the search
// asks for two entries to learn whether the filter picks one; a directory
// whose own size limit is 1 (slapd's sizelimit, an AD query policy, a
// limit on the search account) returns one entry and sizeLimitExceeded
// for a filter that matches several. That one entry, whichever the
// directory happened to return, was taken as the user's: the name given
// at AUTH then logs in with the password and senders of another entry.
func TestLDAPServerSizeLimitIsNotUniqueness(t *testing.T) {
	srv := ldaptest.StartWith(t, people, "sizelimit 1")
	ambiguous := newLDAP(t, LDAPConfig{URL: srv.TLSURL, RootCAs: srv.CA.Pool(),
		Filter: "(|(uid={user})(uid=bob))", SenderTemplate: "{user}@example.org"})
	for _, pw := range []string{"alice-pw", "bob-pw"} {
		u, err := ambiguous.Authenticate(context.Background(), "alice", pw)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("alice/%s with a filter matching alice and bob, under a size limit of 1: %+v %v, want unavailable", pw, u, err)
		}
	}
	// One entry and no more: still a login.
	one := newLDAP(t, LDAPConfig{URL: srv.TLSURL, RootCAs: srv.CA.Pool(), SenderAttribute: "mail"})
	if _, err := one.Authenticate(context.Background(), "alice", "alice-pw"); err != nil {
		t.Errorf("alice alone: %v", err)
	}
}
