package ca

import (
	"context"
	"crypto/x509"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// fakeClock is a clock the test moves by hand. Every After call is
// reported on waits, so the test knows when the Source is idle and for
// how long it means to be.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
	waits  chan time.Duration
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, waits: make(chan time.Duration, 16)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	if d <= 0 {
		ch <- c.now
	} else {
		c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), ch: ch})
	}
	c.mu.Unlock()
	c.waits <- d
	return ch
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.ch <- c.now
	}
	c.timers = kept
}

// wait returns the duration of the Source's next After call.
func (c *fakeClock) wait(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.waits:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("the source never waited")
		return 0
	}
}

func TestRenewIn(t *testing.T) {
	leaf := func(from, to time.Time) *x509.Certificate { return &x509.Certificate{NotBefore: from, NotAfter: to} }
	for _, tc := range []struct {
		name string
		leaf *x509.Certificate
		now  time.Time
		want time.Duration
	}{
		{"fresh", leaf(t0, t0.Add(2*time.Hour)), t0, time.Hour},
		{"backdated", leaf(t0.Add(-backdate), t0.Add(time.Hour)), t0, 30*time.Minute - backdate/2},
		{"past half", leaf(t0, t0.Add(2*time.Hour)), t0.Add(90 * time.Minute), -30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := renewIn(tc.leaf, tc.now); got != tc.want {
				t.Errorf("renewIn = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestSourceRenewsAtHalfLifeOnTheCAsClock: the control plane's own
// certificate is renewed when half its life has passed on the CA's
// clock, not before, and a failed renewal keeps the old one and retries.
func TestSourceRenewsAtHalfLifeOnTheCAsClock(t *testing.T) {
	clk := newFakeClock(t0)
	dir := t.TempDir()
	// An intermediate of 2h, so the test can also outlive it.
	if err := Init(InitConfig{Dir: dir, TrustDomain: td, IntermediateTTL: 2 * time.Hour, Now: clk.Now}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: clk.Now, After: clk.After}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := spiffeid.RequireFromString("spiffe://example.org/ns/bulwark-system/sa/bulwark")
	src, err := c.NewSource(ctx, id, time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	current := func() string {
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	first := current()

	// Issued at t0, backdated 30s, valid 1h from then: half way is 30s
	// short of 30m.
	if d, want := clk.wait(t), 30*time.Minute-backdate; d != want {
		t.Fatalf("first renewal in %s, want %s", d, want)
	}
	clk.Advance(30*time.Minute - backdate - time.Second)
	if current() != first {
		t.Fatal("renewed before half its lifetime")
	}
	clk.Advance(time.Second)
	if d, want := clk.wait(t), 30*time.Minute-backdate; d != want {
		t.Errorf("second renewal in %s, want %s", d, want)
	}
	second := current()
	if second == first {
		t.Fatal("not renewed at half its lifetime")
	}
	svid, _ := src.GetX509SVID()
	if got, want := svid.Certificates[0].NotBefore, clk.Now().Add(-backdate); !got.Equal(want) {
		t.Errorf("renewed certificate from %s, want %s: the CA's clock, not the wall clock", got, want)
	}

	// Past the intermediate, renewal fails: the old certificate stays
	// and the source retries after renewRetry.
	clk.Advance(3 * time.Hour)
	if d := clk.wait(t); d != renewRetry {
		t.Errorf("after a failed renewal it waits %s, want %s", d, renewRetry)
	}
	if current() != second {
		t.Error("a failed renewal replaced the certificate")
	}
}
