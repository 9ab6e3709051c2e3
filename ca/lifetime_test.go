package ca

import (
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestLeafLifetimeIsAtMostTheCap: the backdate for clock skew comes out
// of the lifetime, not on top of it: NotAfter - NotBefore never exceeds
// the CA's maximum, whatever was asked.
func TestLeafLifetimeIsAtMostTheCap(t *testing.T) {
	c24, _ := newTestCA(t, t0)
	c1, err := New(Config{TrustDomain: td, Roots: c24.roots, Chain: c24.chain, Signer: c24.signer, Now: fixedAt(t0), MaxTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		c    *CA
		ttl  time.Duration
		want time.Duration
	}{
		{"default", c24, 0, 24 * time.Hour},
		{"the cap asked for", c24, 24 * time.Hour, 24 * time.Hour},
		{"above the cap", c24, 30 * 24 * time.Hour, 24 * time.Hour},
		{"short", c24, 2 * time.Minute, 2 * time.Minute},
		{"a CA capped at 1h, default", c1, 0, time.Hour},
		{"a CA capped at 1h, 24h asked", c1, 24 * time.Hour, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := tc.c.SignSVID(p256(t).Public(), apiID, tc.ttl)
			if err != nil {
				t.Fatal(err)
			}
			leaf := chain[0]
			if got := leaf.NotAfter.Sub(leaf.NotBefore); got != tc.want {
				t.Errorf("NotAfter - NotBefore = %s, want %s", got, tc.want)
			}
			if !leaf.NotBefore.Before(t0) {
				t.Errorf("NotBefore %s is not backdated from %s", leaf.NotBefore, t0)
			}
		})
	}
}

// TestCheckSVIDRefusesALifetimeOverTheCap: the profile check enforces
// the cap too: 24h by default, or the CA's.
func TestCheckSVIDRefusesALifetimeOverTheCap(t *testing.T) {
	c, _ := newTestCA(t, t0)
	long := forge(t, c, func(l *x509.Certificate) { l.NotBefore, l.NotAfter = t0.Add(-backdate), t0.Add(24*time.Hour) })
	err := CheckSVID(long, c.Roots(), td, t0)
	if !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), "valid for 24h0m30s, longer than 24h0m0s") {
		t.Errorf("CheckSVID on a leaf of 24h30s = %v", err)
	}
	hour := forge(t, c, func(l *x509.Certificate) { l.NotBefore, l.NotAfter = t0.Add(-time.Minute), t0.Add(time.Hour) })
	if err := CheckSVID(hour, c.Roots(), td, t0); err != nil {
		t.Errorf("a leaf of 1h1m under the default cap: %v", err)
	}
	if err := CheckSVID(hour, c.Roots(), td, t0, WithMaxLifetime(time.Hour)); !errors.Is(err, ErrProfile) {
		t.Errorf("a leaf of 1h1m under a cap of 1h: %v", err)
	}
}

// TestWorkloadLeavesNameTheirWorkload: SignWorkloadSVID names the
// workload in the subject and WorkloadOf reads it back; a leaf from
// SignSVID names none; the profile holds either way.
func TestWorkloadLeavesNameTheirWorkload(t *testing.T) {
	c, _ := newTestCA(t, t0)
	w := Workload{Namespace: "prod", Name: "api-7f9c"}
	chain, err := c.SignWorkloadSVID(p256(t).Public(), apiID, w, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := WorkloadOf(chain[0]); !ok || got != w {
		t.Errorf("WorkloadOf = %v, %v; want %v", got, ok, w)
	}
	if s := chain[0].Subject.String(); s != "CN=api-7f9c,OU=prod,O=Bulwark" {
		t.Errorf("subject %s", s)
	}
	if err := CheckSVID(chain, c.Roots(), td, t0); err != nil {
		t.Error(err)
	}
	plain, err := c.SignSVID(p256(t).Public(), apiID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := WorkloadOf(plain[0]); ok {
		t.Errorf("a leaf from SignSVID names workload %v", got)
	}
	for _, bad := range []Workload{{"", "api"}, {"prod", ""}, {"prod", strings.Repeat("a", 65)}} {
		if _, err := c.SignWorkloadSVID(p256(t).Public(), apiID, bad, 0); err == nil {
			t.Errorf("workload %q was accepted", bad.String())
		}
	}
}
