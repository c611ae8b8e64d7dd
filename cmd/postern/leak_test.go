package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them. A
// daemon run in this process (TestAnyNumberOfListeners) leaves the purge
// goroutines of the AUTH cache's expirable LRUs, which never end (a known
// property of golang-lru/v2's expirable cache; relay/auth ignores them too).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, ignoreLRUPurge) }

var ignoreLRUPurge = goleak.IgnoreTopFunction("github.com/hashicorp/golang-lru/v2/expirable.NewLRU[...].func1")
