package controlplane

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
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

var _ SVIDSource = (*ca.Source)(nil)

// newAuthority returns cfg.CA when there is one (no lifecycle: coord is
// nil), else the rotating authority built from the trust State that
// cfg.Trust keeps, or the directory cfg.CADir. Either way its trust
// domain must be td, the mesh's. It never creates a CA: a State that does
// not load is an error here, since there is no last good one yet.
func newAuthority(ctx context.Context, cfg Config, td spiffeid.TrustDomain, reg prometheus.Registerer) (Authority, TrustCoordinator, error) {
	if cfg.CA != nil {
		if got := cfg.CA.TrustDomain(); got != td {
			return nil, nil, fmt.Errorf("controlplane: the CA issues for trust domain %q, but the mesh's trust domain is %q", got, td)
		}
		return cfg.CA, nil, nil
	}
	coord := cfg.Trust
	if coord == nil {
		coord = DirCoordinator{Dir: trust.NewDirStore(cfg.CADir, td)}
	}
	st, err := coord.Store().Load(ctx)
	if err != nil {
		return nil, nil, err
	}
	if st.TrustDomain != td {
		return nil, nil, fmt.Errorf("controlplane: the CA issues for trust domain %q, but the mesh's trust domain is %q", st.TrustDomain, td)
	}
	r, err := newRotatingAuthority(st, ca.Config{TrustDomain: td, MaxTTL: cfg.MaxCertTTL}, cfg.ReissueWithin, reg, cfg.Logger)
	if err != nil {
		return nil, nil, err
	}
	return r, coord, nil
}
