package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source is an X.509-SVID the CA issues to its own process (the control
// plane's serving certificate) and renews at half its lifetime, on the
// CA's clock (Config.Now and Config.After). A renewal that fails is
// retried every 10 seconds while the current SVID stays in use. It
// implements go-spiffe's x509svid.Source and x509bundle.Source, so it
// plugs into go-spiffe's TLS helpers. It is safe for concurrent use.
type Source struct {
	ca  *CA
	id  spiffeid.ID
	ttl time.Duration
	log *slog.Logger

	mu   sync.RWMutex
	svid *x509svid.SVID
}

var (
	_ x509svid.Source   = (*Source)(nil)
	_ x509bundle.Source = (*Source)(nil)
)

// NewSource issues a first SVID for id and renews it in the background
// until ctx ends. ttl zero means the CA's default.
func (c *CA) NewSource(ctx context.Context, id spiffeid.ID, ttl time.Duration, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Source{ca: c, id: id, ttl: ttl, log: log}
	if err := s.renew(); err != nil {
		return nil, err
	}
	go s.run(ctx)
	return s, nil
}

func (s *Source) renew() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	chain, err := s.ca.SignSVID(key.Public(), s.id, s.ttl)
	if err != nil {
		return fmt.Errorf("ca: own certificate for %s: %w", s.id, err)
	}
	s.mu.Lock()
	s.svid = &x509svid.SVID{ID: s.id, Certificates: chain, PrivateKey: key}
	s.mu.Unlock()
	return nil
}

// renewRetry is how long a Source waits after a failed renewal.
const renewRetry = 10 * time.Second

func (s *Source) run(ctx context.Context) {
	for {
		s.mu.RLock()
		leaf := s.svid.Certificates[0]
		s.mu.RUnlock()
		select {
		case <-ctx.Done():
			return
		case <-s.ca.after(renewIn(leaf, s.ca.now())):
		}
		if err := s.renew(); err != nil {
			s.log.Error("cannot renew the control plane's own certificate; retrying in 10s", "id", s.id, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-s.ca.after(renewRetry):
			}
		}
	}
}

// renewIn is how long from now until leaf is half way through its
// lifetime; zero or less when it already is.
func renewIn(leaf *x509.Certificate, now time.Time) time.Duration {
	half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	return half.Sub(now)
}

// GetX509SVID returns the current SVID.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the CA's roots for its own trust
// domain and an error for any other.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.ca.td {
		return nil, fmt.Errorf("ca: no bundle for trust domain %s", td)
	}
	return x509bundle.FromX509Authorities(td, s.ca.roots), nil
}
