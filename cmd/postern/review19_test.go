package main

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/postern/postern/relay/auth"
	"github.com/postern/postern/relay/quota"
)

// TestSuspendDirectoryUserInAnyCase (review of issue 19): a directory
// user's name is folded to lower case at AUTH (the directory matches it
// without regard to case), so "postern user suspend Alice", which an
// operator copies from the directory's display, must suspend alice; it
// suspended a name no session uses, and answered "suspended". A local
// user keeps its name as written.
func TestSuspendDirectoryUserInAnyCase(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	users, _ := auth.NewStore(db, nil)
	if err := users.Add("Ops", "pw", nil); err != nil {
		t.Fatal(err)
	}
	counter, err := quota.Open(db, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := &local{users: users, quota: counter}
	if err := l.UserSuspend("Alice", true); err != nil {
		t.Fatal(err)
	}
	if _, ok := counter.Suspended("alice"); !ok {
		t.Error(`"user suspend Alice" did not suspend the directory user alice`)
	}
	if rep, err := l.UserShow("ALICE"); err != nil || !rep.Suspended || rep.Name != "alice" {
		t.Errorf(`"user show ALICE": %+v %v`, rep, err)
	}
	if err := l.UserSuspend("Ops", true); err != nil {
		t.Fatal(err)
	}
	if _, ok := counter.Suspended("Ops"); !ok {
		t.Error(`"user suspend Ops" did not suspend the store user Ops`)
	}
}
