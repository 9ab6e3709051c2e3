package controlplane

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/identity/attest"
	"github.com/bulwarkmesh/bulwark/identity/incluster"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/kube"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
)

// source feeds the model until its context ends.
type source interface {
	Run(ctx context.Context) error
}

// sources is what a mode contributes: the source that feeds the model,
// the trust domain it declares, and how workloads of that mode prove who
// they are to the certificate service.
type sources struct {
	run source
	// synced is closed once the source has synced; nil means it already
	// has (the file source loads before it is returned).
	synced <-chan struct{}
	td     spiffeid.TrustDomain
	// reviewer checks ServiceAccount tokens (Kubernetes mode); tokens
	// redeems join tokens (file mode). The other is nil.
	reviewer issuer.ServiceAccountReviewer
	tokens   *attest.JoinTokens
	// stop ends what the mode started before serving (Kubernetes: the
	// trust coordinator, which releases the Lease) and waits for it; nil
	// when nothing was.
	stop func() error
}

// newSources builds the source of cfg's mode. In Kubernetes mode without
// cfg.CA it also makes sure the CA Secret exists, writes its CA files to
// cfg.CADir (a temporary directory if empty), and, unless cfg.Trust is
// given, starts the trust coordinator on the Secret and sets it as
// cfg.Trust (kubeCA), from which newAuthority then loads the State.
func newSources(ctx context.Context, cfg *Config, store *model.Store, reg prometheus.Registerer) (*sources, error) {
	if cfg.Kube != nil {
		return kubeSources(ctx, cfg, store, reg)
	}
	return fileSources(ctx, *cfg, store, reg)
}

// fileSources loads the mesh files, whose trust domain is then fixed for
// the life of the process, and opens the join token store.
func fileSources(ctx context.Context, cfg Config, store *model.Store, reg prometheus.Registerer) (*sources, error) {
	first, err := meshfile.Load(ctx, cfg.MeshPaths)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(first.Mesh.TrustDomain)
	if err != nil {
		return nil, err
	}
	// The mesh file's validation refuses the default control plane
	// identity; one the operator named is refused here.
	own, err := ownIdentity(cfg.Identity, td)
	if err != nil {
		return nil, err
	}
	fs, err := meshfile.New(ctx, meshfile.Config{Paths: cfg.MeshPaths, Store: store, Logger: cfg.Logger, Registerer: reg,
		Check: func(st *model.State) error {
			if st.Mesh.TrustDomain != td.String() {
				return fmt.Errorf("the trust domain cannot change while the control plane runs (%s -> %s): every certificate would stop verifying", td, st.Mesh.TrustDomain)
			}
			for _, w := range st.Workloads {
				if w.Identity(td.String()) == own {
					return fmt.Errorf("workload %s: service account %s in namespace %s is the control plane's own identity (%s, --identity); no workload may have it",
						w.Key(), w.ServiceAccount, w.Namespace, own)
				}
			}
			return nil
		}})
	if err != nil {
		return nil, err
	}
	tokens, err := attest.NewJoinTokens(cfg.TokenDir, nil)
	if err != nil {
		return nil, err
	}
	return &sources{run: fs, td: td, tokens: tokens}, nil
}

// kubeSources watches the cluster cfg.Kube names and checks workloads'
// ServiceAccount tokens with TokenReview.
func kubeSources(ctx context.Context, cfg *Config, store *model.Store, reg prometheus.Registerer) (*sources, error) {
	k := cfg.Kube
	if k.TrustDomain == "" {
		k.TrustDomain = model.DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(k.TrustDomain)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(k.Rest)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(k.Rest)
	if err != nil {
		return nil, err
	}
	rootPEM, stop, err := kubeCA(ctx, cfg, client, td)
	if err != nil {
		return nil, err
	}
	ks, err := kube.New(kube.Config{Client: client, Dynamic: dyn, Store: store, TrustDomain: k.TrustDomain,
		DefaultAccess: k.DefaultAccess, RootNamespace: k.Namespace, WriteStatus: true, RootCertPEM: rootPEM,
		Logger: cfg.Logger, Registerer: reg})
	if err != nil {
		if stop != nil {
			_ = stop()
		}
		return nil, err
	}
	return &sources{run: ks, synced: ks.Synced(), td: td, stop: stop,
		reviewer: &incluster.TokenReviewer{Client: client, Audience: k.Audience}}, nil
}

// kubeCA sets up the CA of Kubernetes mode, and returns the PEM roots
// the Kubernetes source publishes to workloads (nil: it publishes none)
// and what stops what it started (nil: nothing).
//
// With cfg.CA the roots are that CA's, and there is no lifecycle.
// Otherwise the CA lives in a Secret, created once under a Lease by
// whichever replica gets there first, and written to cfg.CADir. Then,
// unless the embedder gave cfg.Trust, the trust State is kept in that
// Secret by an incluster.Coordinator, started here (so that this replica
// is known to the others' gates before it serves a proxy) and set as
// cfg.Trust; its leader keeps the roots ConfigMaps equal to the bundle's
// roots, so the source publishes none. With an embedder's cfg.Trust, the
// source publishes the Secret's roots file as before.
// The Kubernetes coordinator keeps each replica's roster in its evidence
// ConfigMap.
var _ RosterKeeper = (*incluster.Coordinator)(nil)

func kubeCA(ctx context.Context, cfg *Config, client kubernetes.Interface, td spiffeid.TrustDomain) ([]byte, func() error, error) {
	if cfg.CA != nil {
		return pemutil.EncodeCerts(cfg.CA.Roots()), nil, nil
	}
	if cfg.CADir == "" {
		dir, err := os.MkdirTemp("", "bulwark-ca-")
		if err != nil {
			return nil, nil, err
		}
		cfg.CADir = dir
	}
	if err := incluster.EnsureCASecret(ctx, incluster.CASecretConfig{Client: client, Namespace: cfg.Kube.Namespace, Holder: cfg.Kube.Holder,
		TrustDomain: td, Dir: cfg.CADir, Logger: cfg.Logger}); err != nil {
		return nil, nil, err
	}
	if cfg.Trust != nil {
		roots, err := os.ReadFile(filepath.Join(cfg.CADir, ca.RootCertFile))
		return roots, nil, err
	}
	coord, err := incluster.NewCoordinator(incluster.CoordinatorConfig{Client: client, Namespace: cfg.Kube.Namespace,
		Holder: cfg.Kube.Holder, TrustDomain: td, Logger: cfg.Logger})
	if err != nil {
		return nil, nil, err
	}
	coordCtx, cancel := context.WithCancel(ctx)
	if err := coord.Start(coordCtx); err != nil {
		cancel()
		return nil, nil, err
	}
	cfg.Trust = coord
	return nil, func() error { cancel(); return coord.Wait() }, nil
}
