// Package testwait waits, in tests, for something that happens in
// another process or goroutine: an Envoy taking a configuration, an
// informer catching up, a file watcher reloading.
package testwait

import (
	"testing"
	"time"
)

// Until polls cond every 20ms until it holds, and fails the test,
// naming what it waited for, if that takes longer than d.
func Until(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
