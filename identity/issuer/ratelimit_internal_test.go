package issuer

import (
	"fmt"
	"testing"
	"time"
)

// TestRateLimitForgetsIdleIdentities: with identities coming and going,
// the buckets kept stay bounded by those that asked recently.
func TestRateLimitForgetsIdleIdentities(t *testing.T) {
	now := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	l := newLimiter(RateLimit{PerIdentity: 1, PerIdentityBurst: 10, Global: -1}, func() time.Time { return now })
	for i := range 20000 {
		if err := l.take(fmt.Sprintf("spiffe://cluster.local/ns/n/sa/sa-%d", i), false); err != nil {
			t.Fatal(err)
		}
		now = now.Add(100 * time.Millisecond) // a bucket refills in 1s: ten identities are busy at a time
		if n := l.size(); n > 2048 {
			t.Fatalf("after %d identities, %d buckets kept", i+1, n)
		}
	}
	// A bucket that has not refilled is never forgotten early.
	l = newLimiter(RateLimit{PerIdentity: 1, PerIdentityBurst: 1, Global: -1}, func() time.Time { return now })
	if err := l.take("spiffe://cluster.local/ns/n/sa/busy", false); err != nil {
		t.Fatal(err)
	}
	for i := range 5000 {
		_ = l.take(fmt.Sprintf("spiffe://cluster.local/ns/n/sa/other-%d", i), false)
	}
	if err := l.take("spiffe://cluster.local/ns/n/sa/busy", false); err == nil {
		t.Error("a busy identity's bucket was forgotten while others came and went")
	}
}
