// Package controlplane assembles `bulwark serve`: the model store, the
// mesh file source, the CA and its certificate service, the ADS server
// on one mutual-TLS gRPC port, and the HTTP endpoint for metrics and
// status. It is wiring only; each part lives in its own package.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bulwarkmesh/bulwark/attest"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/contract"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/issuer"
	"github.com/bulwarkmesh/bulwark/kube"
	"github.com/bulwarkmesh/bulwark/meshfile"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// Config configures a control plane. Exactly one of MeshPaths and Kube
// says where the mesh comes from.
type Config struct {
	// MeshPaths are the mesh files or directories to serve.
	MeshPaths []string
	// Kube serves the mesh of a Kubernetes cluster instead.
	Kube *KubeConfig
	// CADir holds the CA material (ca.Load). In file mode it is
	// required, and a missing or corrupt CA is an error, never a reason
	// to make a new one. In Kubernetes mode the CA lives in a Secret and
	// is written here (default: a temporary directory).
	CADir string
	// TokenDir holds join tokens; defaults to CADir/tokens.
	TokenDir string
	// Identity is the control plane's own SPIFFE ID; defaults to
	// contract.ControlPlaneID of the trust domain.
	Identity string
	// MaxCertTTL caps workload certificates; defaults to the CA's 24h.
	MaxCertTTL time.Duration
	// XDSAddress is where ADS and the CA service listen, host:port;
	// port 0 picks one.
	XDSAddress string
	// HTTPAddress is where /metrics, /debug/proxies and /healthz listen;
	// empty disables it.
	HTTPAddress string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Debounce is how long the model must be quiet before a publish;
	// defaults to the server's default.
	Debounce time.Duration
}

// KubeConfig is the Kubernetes side of a control plane.
type KubeConfig struct {
	// Rest reaches the API server. Required.
	Rest *rest.Config
	// Namespace is the control plane's own: the CA Secret, its Lease and
	// mesh-wide policies live there. Required.
	Namespace string
	// TrustDomain defaults to cluster.local.
	TrustDomain string
	// DefaultAccess for workloads no ALLOW policy selects; default deny.
	DefaultAccess model.DefaultAccess
	// Holder names this replica in the CA Lease (its pod name).
	Holder string
	// Audience of workloads' ServiceAccount tokens; default "bulwark".
	Audience string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// XDSAddr and HTTPAddr are the bound addresses.
	XDSAddr  net.Addr
	HTTPAddr net.Addr
	Store    *model.Store
	Server   *server.Server
	CA       *ca.CA
	Tokens   *attest.JoinTokens
	// Identity is the control plane's SPIFFE ID.
	Identity spiffeid.ID
	// CADir is where the CA files are.
	CADir string

	issuer *issuer.Server
	cancel context.CancelFunc
	ctx    context.Context
	group  *errgroup.Group
	once   sync.Once
	err    error
}

// Start loads the mesh and the CA, binds the listeners and serves in the
// background until ctx ends or Stop is called. A mesh or CA that does not
// load is an error here: there is no last good state yet.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.XDSAddress == "" || (len(cfg.MeshPaths) == 0) == (cfg.Kube == nil) {
		return nil, errors.New("controlplane: XDSAddress and exactly one of MeshPaths and Kube are required")
	}
	if cfg.Kube == nil && cfg.CADir == "" {
		return nil, errors.New("controlplane: CADir is required")
	}
	if cfg.TokenDir == "" && cfg.Kube == nil {
		cfg.TokenDir = filepath.Join(cfg.CADir, "tokens")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store := model.NewStore()

	// The source, and what it says of the trust domain.
	var (
		src      source
		synced   <-chan struct{}
		td       spiffeid.TrustDomain
		saReview issuer.ServiceAccountReviewer
		tokens   *attest.JoinTokens
		err      error
	)
	if cfg.Kube != nil {
		k := cfg.Kube
		if k.TrustDomain == "" {
			k.TrustDomain = model.DefaultTrustDomain
		}
		if td, err = spiffeid.TrustDomainFromString(k.TrustDomain); err != nil {
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
		if cfg.CADir == "" {
			if cfg.CADir, err = os.MkdirTemp("", "bulwark-ca-"); err != nil {
				return nil, err
			}
		}
		if err := kube.EnsureCASecret(ctx, kube.CASecretConfig{Client: client, Namespace: k.Namespace, Holder: k.Holder,
			TrustDomain: td, Dir: cfg.CADir, Logger: cfg.Logger}); err != nil {
			return nil, err
		}
		rootPEM, err := os.ReadFile(filepath.Join(cfg.CADir, ca.RootCertFile))
		if err != nil {
			return nil, err
		}
		ks, err := kube.New(kube.Config{Client: client, Dynamic: dyn, Store: store, TrustDomain: k.TrustDomain,
			DefaultAccess: k.DefaultAccess, RootNamespace: k.Namespace, WriteStatus: true, RootCertPEM: rootPEM,
			Logger: cfg.Logger, Registerer: reg})
		if err != nil {
			return nil, err
		}
		src, synced = ks, ks.Synced()
		saReview = &kube.TokenReviewer{Client: client, Audience: k.Audience}
	} else {
		first, err := meshfile.Load(cfg.MeshPaths)
		if err != nil {
			return nil, err
		}
		if td, err = spiffeid.TrustDomainFromString(first.Mesh.TrustDomain); err != nil {
			return nil, err
		}
		fs, err := meshfile.New(meshfile.Config{Paths: cfg.MeshPaths, Store: store, Logger: cfg.Logger, Registerer: reg,
			Check: func(st *model.State) error {
				if st.Mesh.TrustDomain != td.String() {
					return fmt.Errorf("the trust domain cannot change while the control plane runs (%s -> %s): every certificate would stop verifying", td, st.Mesh.TrustDomain)
				}
				return nil
			}})
		if err != nil {
			return nil, err
		}
		src = fs
		if tokens, err = attest.NewJoinTokens(cfg.TokenDir, nil); err != nil {
			return nil, err
		}
	}
	authority, err := ca.Load(ca.LoadConfig{Dir: cfg.CADir, Config: ca.Config{TrustDomain: td, MaxTTL: cfg.MaxCertTTL, Registerer: reg}})
	if err != nil {
		return nil, err
	}
	ident := cfg.Identity
	if ident == "" {
		ident = contract.ControlPlaneID(td).String()
	}
	id, err := spiffeid.FromString(ident)
	if err != nil || !id.MemberOf(td) {
		return nil, fmt.Errorf("controlplane: identity %q is not a SPIFFE ID in %s", ident, td)
	}
	var redeemer issuer.TokenRedeemer
	if tokens != nil {
		redeemer = tokens
	}
	iss, err := issuer.New(issuer.Config{CA: authority, Store: store, Tokens: redeemer, ServiceAccounts: saReview,
		Synced: synced, Logger: cfg.Logger, Registerer: reg})
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{Store: store, Logger: cfg.Logger, Registerer: reg, Debounce: cfg.Debounce,
		Identify: spiffetls.PeerID, Synced: synced})
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(ctx)
	own, err := authority.NewSource(ctx, id, 0, cfg.Logger)
	if err != nil {
		cancel()
		return nil, err
	}
	xdsLis, err := net.Listen("tcp", cfg.XDSAddress)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("xDS listener: %w", err)
	}
	var httpLis net.Listener
	if cfg.HTTPAddress != "" {
		httpLis, err = net.Listen("tcp", cfg.HTTPAddress)
		if err != nil {
			cancel()
			xdsLis.Close()
			return nil, fmt.Errorf("HTTP listener: %w", err)
		}
	}

	g, ctx := errgroup.WithContext(ctx)
	cp := &ControlPlane{XDSAddr: xdsLis.Addr(), Store: store, Server: srv, CA: authority, Tokens: tokens, Identity: id, CADir: cfg.CADir,
		issuer: iss, cancel: cancel, ctx: ctx, group: g}

	grpcServer := grpc.NewServer(append(server.ServerOptions(),
		grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, own, td))),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(1<<16),
	)...)
	srv.Register(ctx, grpcServer)
	iss.Register(grpcServer)

	g.Go(func() error { return src.Run(ctx) })
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error {
		if err := grpcServer.Serve(xdsLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xDS server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { grpcServer.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			grpcServer.Stop() // ADS streams never end on their own
		}
		return nil
	})
	if httpLis != nil {
		cp.HTTPAddr = httpLis.Addr()
		hs := &http.Server{Handler: cp.debugMux(reg), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("HTTP server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			return hs.Close()
		})
	}
	cfg.Logger.Info("control plane serving", "xds", cp.XDSAddr.String(), "http", addrString(cp.HTTPAddr),
		"identity", id.String(), "trust_domain", td.String())
	return cp, nil
}

// source feeds the model until its context ends.
type source interface {
	Run(ctx context.Context) error
}

// Stop shuts the control plane down and waits for it. It returns the
// first error any part failed with.
func (c *ControlPlane) Stop() error {
	c.cancel()
	return c.Wait()
}

// Done is closed when the control plane begins to stop.
func (c *ControlPlane) Done() <-chan struct{} { return c.ctx.Done() }

// Wait blocks until the control plane has stopped (its context ended or
// a part failed) and returns the first error.
func (c *ControlPlane) Wait() error {
	c.once.Do(func() { c.err = c.group.Wait() })
	return c.err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// ProxyReport is what /debug/proxies says of one connected proxy: its
// xDS status, and the latest certificate this control plane issued to
// its workload (none if another replica did, or before the first).
type ProxyReport struct {
	server.ProxyStatus
	Certificate *issuer.Issued `json:"certificate,omitempty"`
}

// Proxies reports every connected proxy, sorted by node.
func (cp *ControlPlane) Proxies() []ProxyReport {
	certs := map[string]issuer.Issued{}
	for _, c := range cp.issuer.Certificates() {
		certs[c.Workload] = c
	}
	ps := cp.Server.Proxies()
	out := make([]ProxyReport, 0, len(ps))
	for _, p := range ps {
		r := ProxyReport{ProxyStatus: p}
		if c, ok := certs[p.Workload]; ok {
			r.Certificate = &c
		}
		out = append(out, r)
	}
	return out
}

// Certificates returns the latest certificate issued to each workload.
func (cp *ControlPlane) Certificates() []issuer.Issued { return cp.issuer.Certificates() }

func (cp *ControlPlane) debugMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /debug/proxies", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, cp.Proxies())
	})
	mux.HandleFunc("GET /debug/certificates", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, cp.Certificates())
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
