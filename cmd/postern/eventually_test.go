package main

import (
	"testing"
	"time"
)

// eventually polls cond until it holds or within has passed, and reports
// whether it held. It is how these tests wait for what they cannot be told
// of (a daemon in another process, its log, its queue, its metrics); the
// caller fails with what it saw. The first check is at once; later ones
// back off from 10 ms to 200 ms.
func eventually(t testing.TB, within time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(within)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(wait)
	}
}
