package agent

import (
	"testing"
	"time"
)

func TestRenewAtHalfLifeWithJitter(t *testing.T) {
	nb := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	na := nb.Add(24 * time.Hour)
	for _, tc := range []struct {
		r    float64
		want time.Duration
	}{
		{0.5, 12 * time.Hour},
		{0, 24 * time.Hour * 4 / 10},
		{0.999999, 24*time.Hour*6/10 - 86*time.Millisecond},
	} {
		got := RenewAt(nb, na, tc.r).Sub(nb)
		if d := got - tc.want; d < -time.Second || d > time.Second {
			t.Errorf("RenewAt(r=%v) = %s after issue, want %s", tc.r, got, tc.want)
		}
	}
	// Never outside 40%-60% of the lifetime.
	for i := 0; i < 1000; i++ {
		r := float64(i) / 1000
		at := RenewAt(nb, na, r).Sub(nb)
		if at < 24*time.Hour*4/10 || at > 24*time.Hour*6/10 {
			t.Fatalf("r=%v renews at %s", r, at)
		}
	}
}
