package issuer

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Default issuance limits. A workload renews once per half lifetime (12h
// with 24h certificates), so steady state is far below any of them; what
// they are sized for is a restart storm, where every workload asks at
// once, and what they are sized against is one workload's key minting
// certificates in a loop.
//
//   - Globally 200 per second after a burst of 2,000: the CA signs about
//     4,900 per second on two cores (BENCHMARKS.md), so issuance never
//     takes more than a few percent of the CPU that ADS needs, and a cold
//     start of a 10,000-workload mesh still completes in under a minute.
//   - Per SPIFFE ID 10 per second after a burst of 200: a deployment of
//     200 replicas sharing a service account restarts at once without a
//     refusal, 1,000 within 80 s, and renewals fit even with lifetimes of
//     minutes; one identity alone gets at most a twentieth of the global
//     rate, so it cannot starve the others.
const (
	DefaultRatePerIdentity  = 10
	DefaultBurstPerIdentity = 200
	DefaultRate             = 200
	DefaultBurst            = 2000
)

// RateLimit bounds how fast certificates are issued: per SPIFFE ID, and
// in total. The zero value means the defaults.
type RateLimit struct {
	// PerIdentity is certificates per second for one SPIFFE ID, after
	// PerIdentityBurst at once. Zero means DefaultRatePerIdentity;
	// negative means no limit per identity.
	PerIdentity      float64
	PerIdentityBurst int
	// Global is certificates per second for all callers together, after
	// GlobalBurst at once. Zero means DefaultRate; negative means no
	// global limit.
	Global      float64
	GlobalBurst int
}

// NoRateLimit turns both limits off (load tests of the CA itself).
var NoRateLimit = RateLimit{PerIdentity: -1, Global: -1}

func (r RateLimit) withDefaults() RateLimit {
	if r.PerIdentity == 0 {
		r.PerIdentity = DefaultRatePerIdentity
	}
	if r.PerIdentityBurst <= 0 {
		r.PerIdentityBurst = DefaultBurstPerIdentity
	}
	if r.Global == 0 {
		r.Global = DefaultRate
	}
	if r.GlobalBurst <= 0 {
		r.GlobalBurst = DefaultBurst
	}
	return r
}

// Scopes of a refusal: the only values of the rate-limited metric's label.
const (
	scopeIdentity = "identity"
	scopeGlobal   = "global"
)

// limiter holds one token bucket per SPIFFE ID and one for everyone.
// Its map forgets buckets that have refilled, which loses nothing (a
// new bucket starts full), so it stays as small as the set of identities
// that asked recently. Keys are identities the issuer has authenticated
// and found in the model, never anything a caller chose.
type limiter struct {
	cfg     RateLimit
	now     func() time.Time
	limited *prometheus.CounterVec

	mu      sync.Mutex
	global  *rate.Limiter // nil: no global limit
	ids     map[string]*rate.Limiter
	pruneAt int
}

func newLimiter(cfg RateLimit, now func() time.Time) *limiter {
	cfg = cfg.withDefaults()
	l := &limiter{cfg: cfg, now: now, ids: map[string]*rate.Limiter{}, pruneAt: 1024,
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_issuer_rate_limited_total",
			Help: "Certificate requests refused because an issuance rate limit was reached, by scope (identity or global).",
		}, []string{"scope"})}
	l.limited.WithLabelValues(scopeIdentity)
	l.limited.WithLabelValues(scopeGlobal)
	if cfg.Global > 0 {
		l.global = rate.NewLimiter(rate.Limit(cfg.Global), cfg.GlobalBurst)
	}
	return l
}

// gate refuses a request before anything is done for it (no token
// redeemed, no TokenReview made) while the global bucket is empty. It
// takes nothing.
func (l *limiter) gate() error {
	if l.global == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if wait := untilOne(l.global, l.now()); wait > 0 {
		return l.refuse(scopeGlobal, "the control plane is issuing certificates at its limit", wait)
	}
	return nil
}

// take charges one certificate to id and to the global bucket, or
// refuses it if either is empty, charging neither. A request that spent
// a one-time credential (a join token) is charged but never refused: the
// credential cannot be used again, and it is the operator who mints them.
func (l *limiter) take(id string, spentCredential bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var mine *rate.Limiter
	if l.cfg.PerIdentity > 0 {
		mine = l.ids[id]
		if mine == nil {
			mine = rate.NewLimiter(rate.Limit(l.cfg.PerIdentity), l.cfg.PerIdentityBurst)
			l.ids[id] = mine
			if len(l.ids) > l.pruneAt {
				l.pruneLocked(now)
			}
		}
	}
	if !spentCredential {
		if wait := untilOne(mine, now); wait > 0 {
			return l.refuse(scopeIdentity, fmt.Sprintf("%s has been issued certificates at its limit (%g per second after %d)",
				id, l.cfg.PerIdentity, l.cfg.PerIdentityBurst), wait)
		}
		if wait := untilOne(l.global, now); wait > 0 {
			return l.refuse(scopeGlobal, "the control plane is issuing certificates at its limit", wait)
		}
	}
	for _, b := range []*rate.Limiter{mine, l.global} {
		if b != nil {
			b.ReserveN(now, 1) // may go into debt when spentCredential
		}
	}
	return nil
}

// pruneLocked forgets the buckets that are full again.
func (l *limiter) pruneLocked(now time.Time) {
	for id, b := range l.ids {
		if b.TokensAt(now) >= float64(b.Burst()) {
			delete(l.ids, id)
		}
	}
	l.pruneAt = max(1024, 2*len(l.ids))
}

// refuse counts a refusal and returns it as ResourceExhausted with the
// wait in the message and as a RetryInfo detail, which agents honour.
func (l *limiter) refuse(scope, why string, wait time.Duration) error {
	l.limited.WithLabelValues(scope).Inc()
	wait = wait.Round(time.Millisecond) + time.Millisecond
	st := status.New(codes.ResourceExhausted, fmt.Sprintf("%s; retry in %s", why, wait))
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)}); err == nil {
		st = d
	}
	return st.Err()
}

// untilOne is how long until b holds a whole token; zero when it does
// now, or when b is nil (no limit).
func untilOne(b *rate.Limiter, now time.Time) time.Duration {
	if b == nil {
		return 0
	}
	missing := 1 - b.TokensAt(now)
	if missing <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(missing / float64(b.Limit()) * float64(time.Second)))
}

// size is the number of identities the limiter tracks (for tests).
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ids)
}
