package controlplane

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
)

// Authority is what the control plane needs of its certificate
// authority: to sign workloads' X.509-SVIDs and hand out the trust
// bundle (issuer.Signer: TrustDomain, Roots, SignSVID), and to keep the
// control plane's own SVID, which its gRPC server presents to agents and
// Envoys. Implementations must be safe for concurrent use; Roots may
// change over time (rotation), and every caller reads it afresh.
type Authority interface {
	issuer.Signer
	// ServingSource returns the control plane's own X.509-SVID for id,
	// with the bundle that callers' certificates are verified against,
	// and keeps both current until ctx ends. It fails if it cannot issue
	// the first SVID.
	ServingSource(ctx context.Context, id spiffeid.ID) (SVIDSource, error)
}

// SVIDSource is the control plane's own certificate and trust bundle, in
// the form go-spiffe's TLS helpers read them. Safe for concurrent use.
type SVIDSource interface {
	x509svid.Source
	x509bundle.Source
}

var (
	_ Authority  = fileAuthority{}
	_ SVIDSource = (*ca.Source)(nil)
)

// fileAuthority is the default Authority: package ca's CA, loaded from a
// directory (in Kubernetes mode, the directory the CA Secret was written
// to). Its own SVID is renewed at half life by a ca.Source.
type fileAuthority struct {
	*ca.CA
	log *slog.Logger
}

// ServingSource issues the control plane's SVID with the CA's default
// lifetime.
func (f fileAuthority) ServingSource(ctx context.Context, id spiffeid.ID) (SVIDSource, error) {
	src, err := f.NewSource(ctx, id, 0, f.log)
	if err != nil {
		return nil, err
	}
	return src, nil
}

// newAuthority returns cfg.CA when there is one, else loads the file CA
// from cfg.CADir. Either way its trust domain must be td, the mesh's.
// It never creates a CA.
func newAuthority(cfg Config, td spiffeid.TrustDomain, reg prometheus.Registerer) (Authority, error) {
	if cfg.CA != nil {
		if got := cfg.CA.TrustDomain(); got != td {
			return nil, fmt.Errorf("controlplane: the CA issues for trust domain %q, but the mesh's trust domain is %q", got, td)
		}
		return cfg.CA, nil
	}
	c, err := ca.Load(ca.LoadConfig{Dir: cfg.CADir, Config: ca.Config{TrustDomain: td, MaxTTL: cfg.MaxCertTTL, Registerer: reg}})
	if err != nil {
		return nil, err
	}
	return fileAuthority{CA: c, log: cfg.Logger}, nil
}
