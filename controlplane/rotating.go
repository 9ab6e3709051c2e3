package controlplane

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// rotatingAuthority is the Authority built from the trust State: it signs
// with whichever authority is active, hands out the bundle's roots, and
// follows the State as the trust loop installs each new one. It is safe
// for concurrent use; every call reads the State installed last.
type rotatingAuthority struct {
	td      spiffeid.TrustDomain
	caCfg   ca.Config // lifetimes and clock; the rest comes from the State
	reissue time.Duration
	log     *slog.Logger

	mu      sync.RWMutex
	st      *trust.State
	ca      *ca.CA
	active  string
	bundle  trust.Bundle
	changed chan struct{} // closed when bundle (or the active authority) changes
}

var _ Authority = (*rotatingAuthority)(nil)

// newRotatingAuthority builds the authority from a first State, which
// must have an active authority that can sign now.
// reissue, when positive, replaces the bundle's ReissueWithin.
func newRotatingAuthority(st *trust.State, caCfg ca.Config, reissue time.Duration, reg prometheus.Registerer, log *slog.Logger) (*rotatingAuthority, error) {
	if reg != nil {
		caCfg.Registerer = &swapRegisterer{reg: reg}
	}
	r := &rotatingAuthority{td: st.TrustDomain, caCfg: caCfg, reissue: reissue, log: log, changed: make(chan struct{})}
	if _, err := r.install(st); err != nil {
		return nil, err
	}
	return r, nil
}

// errSequenceBack refuses a State whose bundle sequence is below the
// one in use.
var errSequenceBack = errors.New("the trust bundle sequence went back")

// install makes st the State in use, if it can sign: a State whose active
// authority cannot be built into a CA is refused and the one before stays
// in use. So is a State whose bundle sequence is below the one in use (a
// CA directory or Secret restored from a backup): agents ignore a bundle
// older than the one they hold, so nothing it carries (a CRL) would reach
// them (errSequenceBack). It reports whether what workloads are handed
// changed.
func (r *rotatingAuthority) install(st *trust.State) (bool, error) {
	if st.TrustDomain != r.td {
		return false, fmt.Errorf("the trust state is for trust domain %s, not %s", st.TrustDomain, r.td)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st != nil && st.Sequence < r.st.Sequence {
		return false, fmt.Errorf("%w: the stored trust state is at bundle sequence %d, below the %d in use (restored from a backup?); "+
			"agents ignore a bundle older than the one they hold, so its CRLs would never reach them. "+
			"To use it, raise its sequence above %d (the highest any agent may hold) and save it again",
			errSequenceBack, st.Sequence, r.st.Sequence, r.st.Sequence)
	}
	if r.st != nil && r.st.Revision == st.Revision && r.st.Sequence == st.Sequence {
		r.st = st
		return false, nil
	}
	// The CA is built again only when another authority signs: its roots
	// serve only to check what it signs, which chains to the active root
	// whatever else the bundle holds.
	c := r.ca
	if r.st == nil || activeID(r.st) != activeID(st) {
		var err error
		if c, err = st.CA(r.caCfg); err != nil {
			return false, err
		}
	}
	r.st, r.ca = st, c
	b := st.Bundle()
	if r.reissue > 0 {
		b.ReissueWithin = r.reissue
	}
	moved := b.Sequence != r.bundle.Sequence || activeID(st) != r.active
	r.bundle, r.active = b, activeID(st)
	if moved {
		close(r.changed)
		r.changed = make(chan struct{})
	}
	return moved, nil
}

func activeID(st *trust.State) string {
	if a := st.Active(); a != nil {
		return a.ID
	}
	return ""
}

// State returns the State in use. It is shared: do not modify it.
func (r *rotatingAuthority) State() *trust.State {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.st
}

func (r *rotatingAuthority) current() *ca.CA {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ca
}

// TrustDomain is the State's, fixed for the life of the process.
func (r *rotatingAuthority) TrustDomain() spiffeid.TrustDomain { return r.td }

// Roots are the bundle's: every root not removed.
func (r *rotatingAuthority) Roots() []*x509.Certificate {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.bundle.Roots
}

// Bundle returns the bundle now and a channel closed when it changes
// (issuer.BundleSource).
func (r *rotatingAuthority) Bundle() (trust.Bundle, <-chan struct{}) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.bundle, r.changed
}

// Revoked says whether the revocation list in use covers a caller
// (issuer.RevokedFunc): the issuer then refuses it any certificate and
// the bundle stream.
func (r *rotatingAuthority) Revoked(serial string, id spiffeid.ID, workload string) (string, bool) {
	rev, ok := r.State().Revoked(serial, id, workload)
	if !ok {
		return "", false
	}
	return fmt.Sprintf("%s %s revoked at %s by %s: %s", rev.Kind, rev.Value, rev.At.UTC().Format(time.RFC3339), rev.By, rev.Reason), true
}

// Vouches accepts a certificate as a credential only when an authority
// of the State that is neither revoked nor removed signed it: the TLS
// handshake checked the chain against the roots only, and a revoked
// intermediate under a root still trusted would otherwise let whoever
// holds its key renew as any workload.
func (r *rotatingAuthority) Vouches(leaf *x509.Certificate) error {
	st := r.State()
	id := st.IssuerOf(leaf)
	a := st.Get(id)
	switch {
	case id == "" || a == nil:
		return errors.New("no authority of the trust state signed it")
	case a.Revoked:
		return fmt.Errorf("authority %s, which signed it, was revoked at %s: %s", a.ID, a.RevokedAt.UTC().Format(time.RFC3339), a.RevokedReason)
	case a.Phase == trust.Removed:
		return fmt.Errorf("authority %s, which signed it, was removed from the trust bundle", a.ID)
	}
	return nil
}

// SignSVID signs with the active authority.
func (r *rotatingAuthority) SignSVID(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	return r.current().SignSVID(pub, id, ttl)
}

// SignWorkloadSVID signs with the active authority.
func (r *rotatingAuthority) SignWorkloadSVID(pub crypto.PublicKey, id spiffeid.ID, w ca.Workload, ttl time.Duration) ([]*x509.Certificate, error) {
	return r.current().SignWorkloadSVID(pub, id, w, ttl)
}

// ServingSource issues the control plane's own SVID, and issues it again
// at half its life and as soon as another authority becomes active (so
// that the old one can be removed without cutting agents off from the
// control plane). Its bundle is the current bundle's roots.
func (r *rotatingAuthority) ServingSource(ctx context.Context, id spiffeid.ID) (SVIDSource, error) {
	s := &servingSource{r: r, id: id, log: r.log}
	if err := s.renew(); err != nil {
		return nil, err
	}
	go s.run(ctx)
	return s, nil
}

// servingSource is the control plane's own SVID from a rotatingAuthority.
type servingSource struct {
	r   *rotatingAuthority
	id  spiffeid.ID
	log *slog.Logger

	mu     sync.RWMutex
	svid   *x509svid.SVID
	signer string // the authority that signed svid
}

var _ SVIDSource = (*servingSource)(nil)

func (s *servingSource) renew() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	s.r.mu.RLock()
	c, signer := s.r.ca, s.r.active
	s.r.mu.RUnlock()
	chain, err := c.SignSVID(key.Public(), s.id, 0)
	if err != nil {
		return fmt.Errorf("controlplane: own certificate for %s: %w", s.id, err)
	}
	s.mu.Lock()
	s.svid = &x509svid.SVID{ID: s.id, Certificates: chain, PrivateKey: key}
	s.signer = signer
	s.mu.Unlock()
	return nil
}

// servingRetry is how long the serving source waits after a failed
// renewal.
const servingRetry = 10 * time.Second

func (s *servingSource) run(ctx context.Context) {
	now, after := s.r.caCfg.Now, s.r.caCfg.After
	if now == nil {
		now = time.Now
	}
	if after == nil {
		after = time.After
	}
	for {
		s.mu.RLock()
		leaf, signer := s.svid.Certificates[0], s.signer
		s.mu.RUnlock()
		half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
		_, changed := s.r.Bundle()
		s.r.mu.RLock()
		moved := s.r.active != signer
		s.r.mu.RUnlock()
		if !moved {
			select {
			case <-ctx.Done():
				return
			case <-after(half.Sub(now())):
			case <-changed:
				continue // look again: only a new active authority calls for a new SVID
			}
		}
		if err := s.renew(); err != nil {
			s.log.Error("cannot renew the control plane's own certificate; retrying in 10s", "id", s.id, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-after(servingRetry):
			}
		} else if moved {
			s.log.Info("control plane's own certificate re-issued by the new active authority", "id", s.id, "authority", s.r.active)
		}
	}
}

// GetX509SVID returns the current SVID.
func (s *servingSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle's roots for the trust
// domain, and an error for any other.
func (s *servingSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.r.td {
		return nil, fmt.Errorf("controlplane: no bundle for trust domain %s", td)
	}
	return x509bundle.FromX509Authorities(td, s.r.Roots()), nil
}

// swapRegisterer registers the collectors of each CA the State is built
// into, unregistering the previous CA's first: the series go on across a
// rotation (a counter restarts from zero, which Prometheus reads as a
// reset) instead of the second registration failing.
type swapRegisterer struct {
	reg  prometheus.Registerer
	mu   sync.Mutex
	prev []prometheus.Collector
}

func (s *swapRegisterer) Register(c prometheus.Collector) error {
	s.MustRegister(c)
	return nil
}

func (s *swapRegisterer) MustRegister(cs ...prometheus.Collector) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.prev {
		s.reg.Unregister(p)
	}
	s.prev = cs
	for _, c := range cs {
		if err := s.reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err)
			}
		}
	}
}

func (s *swapRegisterer) Unregister(c prometheus.Collector) bool { return s.reg.Unregister(c) }
