package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	"k8s.io/client-go/rest"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/identity/attest"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// Config configures a control plane. Exactly one of MeshPaths and Kube
// says where the mesh comes from.
type Config struct {
	// MeshPaths are the mesh files or directories to serve.
	MeshPaths []string
	// Kube serves the mesh of a Kubernetes cluster instead.
	Kube *KubeConfig
	// CA, when set, is the certificate authority to use instead of the
	// default: the file CA in CADir in file mode, or the CA in the
	// Kubernetes Secret in Kubernetes mode. Its trust domain must be the
	// mesh's. The control plane does not persist or rotate it: it has no
	// trust lifecycle (the admin service says so).
	CA Authority
	// CADir holds the CA material when CA is not set: the trust State
	// (trust.DirStore: its authorities, revocations and rotation in
	// progress, or the files of a CA from before the trust lifecycle). In
	// file mode it is then required, and a missing or corrupt CA is an
	// error, never a reason to make a new one. In Kubernetes mode the CA
	// lives in a Secret and is written here (default: a temporary
	// directory).
	CADir string
	// Trust is where the trust State lives and how replicas agree on it;
	// nil means the directory CADir (one control plane, always leading).
	// Kubernetes mode sets the CA Secret's.
	Trust TrustCoordinator
	// AdminSocket is the Unix socket of the trust admin service (`bulwark
	// ca`): default <CADir>/admin.sock in file mode, DefaultKubeAdminSocket
	// in Kubernetes mode; "none" serves none. Only this process's user and
	// root may connect.
	AdminSocket string
	// RootTTL and IntermediateTTL are the lifetimes of the authorities a
	// rotation mints; defaults ca.DefaultRootTTL and
	// ca.DefaultIntermediateTTL.
	RootTTL, IntermediateTTL time.Duration
	// ReissueWithin is the window over which workloads whose leaf another
	// authority signed replace it after an activation, each at a random
	// moment in it; default trust.DefaultReissueWithin.
	ReissueWithin time.Duration
	// EvidenceWarmup is how long after a start the gates wait, at most,
	// for the proxies connected before to reconnect (see RosterKeeper);
	// default DefaultEvidenceWarmup, negative: not at all.
	EvidenceWarmup time.Duration
	// adminDefault: AdminSocket is the default, not the operator's
	// choice: a socket that cannot be bound is a warning, not a failure.
	adminDefault bool
	// TokenDir holds join tokens (file mode); defaults to CADir/tokens.
	TokenDir string
	// Identity is the control plane's own SPIFFE ID; defaults to
	// contract.ControlPlaneID of the trust domain.
	Identity string
	// MaxCertTTL caps workload certificates; defaults to the CA's 24h.
	// It configures the default CA only: with CA set it is an error.
	MaxCertTTL time.Duration
	// XDSAddress is where ADS and the CA service listen, host:port;
	// port 0 picks one.
	XDSAddress string
	// HTTPAddress is where /metrics, /debug/proxies and /healthz listen;
	// empty disables it. The /debug endpoints answer anyone who reaches
	// them: keep it on loopback (a warning is logged otherwise).
	HTTPAddress string
	// MetricsAddress, when set, is a second listener with /metrics and
	// /healthz only, for probes and scrapers from outside the host.
	MetricsAddress string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Debounce is how long the model must be quiet before a publish;
	// defaults to the server's default.
	Debounce time.Duration
	// Limits bounds connections to the gRPC port and certificate
	// issuance; the zero value means the defaults (limits.go).
	Limits Limits
}

// setDefaults checks cfg and fills in its defaults, reporting every
// problem it finds.
func (cfg *Config) setDefaults() error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Limits = cfg.Limits.withDefaults()
	var errs []error
	if cfg.XDSAddress == "" || (len(cfg.MeshPaths) == 0) == (cfg.Kube == nil) {
		errs = append(errs, errors.New("controlplane: XDSAddress and exactly one of MeshPaths and Kube are required"))
	}
	if cfg.Kube == nil {
		switch {
		case cfg.CA == nil && cfg.CADir == "":
			errs = append(errs, errors.New("controlplane: CADir is required"))
		case cfg.TokenDir == "" && cfg.CADir == "":
			errs = append(errs, errors.New("controlplane: TokenDir (or CADir) is required for join tokens"))
		case cfg.TokenDir == "":
			cfg.TokenDir = filepath.Join(cfg.CADir, "tokens")
		}
	}
	if cfg.RootTTL <= 0 {
		cfg.RootTTL = ca.DefaultRootTTL
	}
	if cfg.IntermediateTTL <= 0 {
		cfg.IntermediateTTL = ca.DefaultIntermediateTTL
	}
	if cfg.EvidenceWarmup == 0 {
		cfg.EvidenceWarmup = DefaultEvidenceWarmup
	}
	if cfg.AdminSocket == "" {
		cfg.adminDefault = true
		switch {
		case cfg.Kube != nil:
			cfg.AdminSocket = DefaultKubeAdminSocket
		case cfg.CADir != "":
			cfg.AdminSocket = filepath.Join(cfg.CADir, "admin.sock")
		}
	}
	if cfg.CA != nil && cfg.MaxCertTTL != 0 {
		errs = append(errs, errors.New("controlplane: MaxCertTTL configures the default CA; a CA given in Config.CA sets its own limits"))
	}
	return errors.Join(errs...)
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
	// Holder names this replica (its pod name) in the CA Lease and in its
	// trust evidence ConfigMap, bulwark-trust-evidence-<Holder>: every
	// replica needs its own. Defaults to hostname-pid.
	Holder string
	// Audience of workloads' ServiceAccount tokens; default "bulwark".
	Audience string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// XDSAddr, HTTPAddr and MetricsAddr are the bound addresses (the
	// last two nil when not configured).
	XDSAddr     net.Addr
	HTTPAddr    net.Addr
	MetricsAddr net.Addr
	Store       *model.Store
	Server      *server.Server
	// CA is the certificate authority in use: Config.CA, or the default.
	CA Authority
	// AdminAddr is the admin socket's path; "" when none is served.
	AdminAddr string
	Tokens    *attest.JoinTokens
	// Identity is the control plane's SPIFFE ID.
	Identity spiffeid.ID
	// CADir is where the default CA's files are (Config.CADir, or the
	// temporary directory the Kubernetes CA Secret was written to).
	CADir string

	issuer *issuer.Server
	trust  *trustManager // nil with Config.CA
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
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store := model.NewStore()
	src, err := newSources(ctx, &cfg, store, reg)
	if err != nil {
		return nil, err
	}
	cp, err := start(ctx, cfg, store, reg, src)
	if err != nil && src.stop != nil {
		_ = src.stop()
	}
	return cp, err
}

// start is Start once the sources are up: what they started is stopped
// by the caller if this fails, and by the control plane's Stop otherwise.
func start(ctx context.Context, cfg Config, store *model.Store, reg *prometheus.Registry, src *sources) (*ControlPlane, error) {
	authority, coord, err := newAuthority(ctx, cfg, src.td, reg)
	if err != nil {
		return nil, err
	}
	id, err := ownIdentity(cfg.Identity, src.td)
	if err != nil {
		return nil, err
	}
	return serve(ctx, cfg, parts{store: store, reg: reg, src: src, ca: authority, coord: coord, id: id})
}

// ownIdentity is the control plane's SPIFFE ID: ident when set, which
// must be in td, else the contract's default for td.
func ownIdentity(ident string, td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if ident == "" {
		return contract.ControlPlaneID(td), nil
	}
	id, err := spiffeid.FromString(ident)
	if err != nil || !id.MemberOf(td) {
		return spiffeid.ID{}, fmt.Errorf("controlplane: identity %q is not a SPIFFE ID in %s", ident, td)
	}
	return id, nil
}

// parts are what serve runs.
type parts struct {
	store *model.Store
	reg   *prometheus.Registry
	src   *sources
	ca    Authority
	coord TrustCoordinator // nil with Config.CA
	id    spiffeid.ID
}

// serve builds the certificate service and the ADS server, binds the
// listeners and runs everything in the background.
func serve(ctx context.Context, cfg Config, p parts) (*ControlPlane, error) {
	var redeemer issuer.TokenRedeemer
	if p.src.tokens != nil {
		redeemer = p.src.tokens
	}
	icfg := issuer.Config{CA: p.ca, Store: p.store, Tokens: redeemer, ServiceAccounts: p.src.reviewer,
		Reserved: []spiffeid.ID{p.id}, Synced: p.src.synced, Logger: cfg.Logger, Registerer: p.reg, RateLimit: cfg.Limits.Issuance}
	if r, ok := p.ca.(*rotatingAuthority); ok {
		icfg.Bundles, icfg.Revoked, icfg.Vouches = r, r.Revoked, r.Vouches
	}
	iss, err := issuer.New(icfg)
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{Store: p.store, Logger: cfg.Logger, Registerer: p.reg, Debounce: cfg.Debounce,
		Identify: spiffetls.PeerID, Synced: p.src.synced})
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(ctx)
	own, err := p.ca.ServingSource(ctx, p.id)
	if err != nil {
		cancel()
		return nil, err
	}
	xdsLis, httpLis, err := listen(cfg)
	if err != nil {
		cancel()
		return nil, err
	}
	metricsLis, err := listenMetrics(cfg)
	if err != nil {
		cancel()
		xdsLis.Close()
		if httpLis != nil {
			httpLis.Close()
		}
		return nil, err
	}
	xdsLis = cfg.Limits.Listener(xdsLis, cfg.Logger, p.reg)
	tm := newTrustManager(cfg, p, srv, iss)
	adminLis, err := listenAdminFor(cfg, p.reg)
	if err != nil {
		cancel()
		xdsLis.Close()
		for _, l := range []net.Listener{httpLis, metricsLis} {
			if l != nil {
				l.Close()
			}
		}
		return nil, err
	}

	g, ctx := errgroup.WithContext(ctx)
	cp := &ControlPlane{XDSAddr: xdsLis.Addr(), Store: p.store, Server: srv, CA: p.ca, Tokens: p.src.tokens, Identity: p.id,
		CADir: cfg.CADir, issuer: iss, trust: tm, cancel: cancel, ctx: ctx, group: g}

	grpcServer := newGRPCServer(own, p.src.td, cfg.Limits)
	srv.Register(ctx, grpcServer)
	iss.Register(grpcServer)

	g.Go(func() error { return p.src.run.Run(ctx) })
	if p.src.stop != nil {
		g.Go(func() error { <-ctx.Done(); return p.src.stop() })
	}
	g.Go(func() error { return srv.Run(ctx) })
	if tm != nil {
		g.Go(func() error { return tm.run(ctx) })
	}
	serveGRPC(ctx, g, grpcServer, xdsLis)
	if adminLis != nil {
		cp.AdminAddr = cfg.AdminSocket
		admin := newAdminServer()
		cav1.RegisterTrustAdminServer(admin, &adminService{t: tm})
		serveAdmin(ctx, g, admin, adminLis)
	}
	if httpLis != nil {
		cp.HTTPAddr = httpLis.Addr()
		serveHTTP(ctx, g, httpLis, cp.debugMux(p.reg))
		warnIfExposed(cfg.Logger, httpLis.Addr())
	}
	if metricsLis != nil {
		cp.MetricsAddr = metricsLis.Addr()
		serveHTTP(ctx, g, metricsLis, metricsMux(p.reg))
	}
	cfg.Logger.Info("control plane serving", "xds", cp.XDSAddr.String(), "http", addrString(cp.HTTPAddr), "metrics", addrString(cp.MetricsAddr),
		"admin", cp.AdminAddr, "identity", p.id.String(), "trust_domain", p.src.td.String())
	return cp, nil
}

// listen binds the xDS listener and, if configured, the HTTP one.
func listen(cfg Config) (xdsLis, httpLis net.Listener, err error) {
	xdsLis, err = net.Listen("tcp", cfg.XDSAddress)
	if err != nil {
		return nil, nil, fmt.Errorf("xDS listener: %w", err)
	}
	if cfg.HTTPAddress != "" {
		httpLis, err = net.Listen("tcp", cfg.HTTPAddress)
		if err != nil {
			xdsLis.Close()
			return nil, nil, fmt.Errorf("HTTP listener: %w", err)
		}
	}
	return xdsLis, httpLis, nil
}

// newGRPCServer serves own's SVID and verifies callers' certificates, if
// they send one, against own's bundle for td. (A client certificate is
// asked for, not required: an agent's first call has none.) Connections
// live within l.
func newGRPCServer(own SVIDSource, td spiffeid.TrustDomain, l Limits) *grpc.Server {
	opts := append(server.ServerOptions(),
		grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, own, td))),
		grpc.MaxConcurrentStreams(1<<16),
		// Headers are an agent's credential and little else: 64 KiB
		// instead of gRPC's 16 MiB, refused before any handler runs.
		grpc.MaxHeaderListSize(64<<10),
	)
	return grpc.NewServer(append(opts, l.ServerOptions()...)...)
}

// serveGRPC serves s on lis in g until ctx ends, then stops it: gently
// for up to 2s, then at once, since ADS streams never end on their own.
func serveGRPC(ctx context.Context, g *errgroup.Group, s *grpc.Server, lis net.Listener) {
	g.Go(func() error {
		if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xDS server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { s.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			s.Stop()
		}
		return nil
	})
}

// serveHTTP serves h on lis in g until ctx ends.
func serveHTTP(ctx context.Context, g *errgroup.Group, lis net.Listener, h http.Handler) {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("HTTP server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		return hs.Close()
	})
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
	// Bundle is which trust bundle the proxy holds, as its agent last
	// reported; nil when the control plane keeps no trust lifecycle.
	Bundle *BundleStatus `json:"bundle,omitempty"`
}

// BundleStatus is which trust bundle a proxy holds.
type BundleStatus struct {
	// Reported is false while its agent has reported nothing: for the
	// gates it then holds no bundle.
	Reported bool `json:"reported"`
	// AgentSeq is the sequence its agent installed, ProxySeq the one its
	// Envoy acknowledged; Current the control plane's.
	AgentSeq uint64 `json:"agentSequence"`
	ProxySeq uint64 `json:"proxySequence"`
	Current  uint64 `json:"currentSequence"`
}

// Proxies reports every connected proxy, sorted by node.
func (cp *ControlPlane) Proxies() []ProxyReport {
	certs := map[string]issuer.Issued{}
	for _, c := range cp.issuer.Certificates() {
		certs[c.Workload] = c
	}
	var current uint64
	bundles := map[string]BundleStatus{}
	if cp.trust != nil {
		current = cp.trust.auth.State().Sequence
		for _, r := range cp.issuer.BundleReports() {
			bundles[r.Workload] = BundleStatus{Reported: true, AgentSeq: r.AgentSeq, ProxySeq: r.ProxySeq, Current: current}
		}
	}
	ps := cp.Server.Proxies()
	out := make([]ProxyReport, 0, len(ps))
	for _, p := range ps {
		r := ProxyReport{ProxyStatus: p}
		if c, ok := certs[p.Workload]; ok {
			r.Certificate = &c
		}
		if cp.trust != nil {
			b, ok := bundles[p.Workload]
			if !ok {
				b = BundleStatus{Current: current}
			}
			r.Bundle = &b
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
