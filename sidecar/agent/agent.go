package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/sds"
	"github.com/bulwarkmesh/bulwark/sidecar/bootstrap"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// Config configures an Agent.
type Config struct {
	// Workload is the workload beside which the agent runs,
	// "namespace/name"; it is also the Envoy node ID. Required.
	Workload string
	// ControlPlane is the control plane's address (CA service and ADS),
	// host:port. Required.
	ControlPlane string
	// ControlPlaneID is the only identity the agent and Envoy accept from
	// the control plane. Required.
	ControlPlaneID spiffeid.ID
	// TrustBundle holds the trust anchors used to verify the control
	// plane before the CA sends its own. Required.
	TrustBundle []*x509.Certificate
	// JoinToken proves the workload's identity for the first certificate.
	JoinToken string
	// ServiceAccountTokenFile, in Kubernetes, holds the pod's projected
	// ServiceAccount token (audience bulwark); it is read at every use,
	// since the kubelet rotates it. It takes the place of JoinToken.
	ServiceAccountTokenFile string
	// CertTTL is the lifetime asked for; zero means the CA's default.
	CertTTL time.Duration
	// SDSSocket is the Unix socket to serve SDS on. Required.
	SDSSocket string
	// SDSAllowedUIDs are users, besides the agent's own and the one it
	// runs Envoy as, whose processes may fetch the key over SDSSocket:
	// the user of an Envoy the agent does not run. Every other
	// connection is refused (see package sds).
	SDSAllowedUIDs []uint32
	// BootstrapPath, when set, receives the Envoy bootstrap.
	BootstrapPath string
	// AdminAddress is Envoy's admin address; defaults to 127.0.0.1:15000.
	AdminAddress string
	// Envoy, when set, is run as the agent's child once the first
	// certificate is in place; the agent exits when it does.
	Envoy *EnvoyConfig
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
	// After is how the agent waits (for a renewal, or before a retry);
	// defaults to time.After. Tests pass a fake clock's.
	After func(time.Duration) <-chan time.Time
}

// EnvoyConfig describes the Envoy the agent runs.
type EnvoyConfig struct {
	Bin            string // empty: envoy.Find
	LogLevel       string
	Stdout, Stderr io.Writer
	// UID and GID, when set, are the user and group Envoy runs as.
	UID, GID  *uint32
	ExtraArgs []string
}

// Agent is a running agent.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	sds  *sds.Server
	td   spiffeid.TrustDomain
	rand *mrand.Rand

	randMu sync.Mutex // rand is used by the renewal loop and the bundle watch

	mu     sync.Mutex
	svid   *x509svid.SVID
	certCh chan struct{} // closed when svid changes
	envoy  *envoy.Process
	// The trust bundle held: its roots are also the anchors the control
	// plane is verified with.
	bundle    []*x509.Certificate
	crls      [][]byte
	bundleSeq uint64
	// signing and reissueWithin come from the latest bundle pushed:
	// the authority that signs now, and the window to move to it in.
	signing       *x509.Certificate
	reissueWithin time.Duration
	// reissuedFor is the bundle for which a move to its signing
	// authority was scheduled: once per bundle, never in a loop.
	reissuedFor uint64
	reissueSet  bool
	// renewBy, when set, asks the renewal loop to renew no later than it;
	// renewWake tells the loop to look.
	renewBy   time.Time
	renewWake chan struct{}

	ready chan struct{}
}

// New checks cfg and returns an agent; it does nothing until Run.
func New(cfg Config) (*Agent, error) {
	if cfg.Workload == "" || cfg.ControlPlane == "" || cfg.ControlPlaneID.IsZero() || len(cfg.TrustBundle) == 0 || cfg.SDSSocket == "" {
		return nil, errors.New("agent: Workload, ControlPlane, ControlPlaneID, TrustBundle and SDSSocket are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.AdminAddress == "" {
		cfg.AdminAddress = bootstrap.DefaultAdminAddress
	}
	s, err := sds.New(sds.Config{CertName: contract.SecretCertificate, RootsName: contract.SecretRoots,
		AllowedUIDs: sdsUsers(cfg), Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	return &Agent{
		cfg: cfg, log: cfg.Logger.With("component", "agent", "workload", cfg.Workload), sds: s,
		td: cfg.ControlPlaneID.TrustDomain(), bundle: cfg.TrustBundle,
		rand:   mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 0)),
		ready:  make(chan struct{}),
		certCh: make(chan struct{}), renewWake: make(chan struct{}, 1),
	}, nil
}

// sdsUsers are the users whose processes may connect to the SDS socket:
// the agent's own, the one it runs Envoy as, and those configured.
func sdsUsers(cfg Config) []uint32 {
	users := []uint32{uint32(os.Getuid())}
	if cfg.Envoy != nil && cfg.Envoy.UID != nil {
		users = append(users, *cfg.Envoy.UID)
	}
	return append(users, cfg.SDSAllowedUIDs...)
}

// Ready is closed once the first certificate is served over SDS, the
// bootstrap is written and Envoy (if any) has been started.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// SVID returns the current certificate, or nil before the first.
func (a *Agent) SVID() *x509svid.SVID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.svid
}

// BundleSequence returns the sequence of the trust bundle the agent
// holds, and of the one its Envoy has acknowledged (0 before any).
func (a *Agent) BundleSequence() (agent, proxy uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bundleSeq, a.sds.AckedBundle()
}

// random returns a number in [0,1) from the agent's source, which the
// renewal loop and the bundle watch share.
func (a *Agent) random() float64 {
	a.randMu.Lock()
	defer a.randMu.Unlock()
	return a.rand.Float64()
}

// Run obtains the first certificate, serves SDS, writes the bootstrap,
// starts Envoy if configured, keeps the trust bundle up to date (see
// watchBundle), and renews until ctx ends or Envoy exits.
func (a *Agent) Run(ctx context.Context) error {
	svid, bundle, err := a.firstCertificate(ctx)
	if err != nil {
		return err
	}
	if err := a.installBundle(bundle); err != nil {
		return err
	}
	if err := a.install(svid); err != nil {
		return err
	}
	lis, err := sds.Listen(a.cfg.SDSSocket)
	if err != nil {
		return fmt.Errorf("agent: SDS socket: %w", err)
	}
	if a.cfg.Envoy != nil && a.cfg.Envoy.GID != nil {
		// Envoy may run as another user; its group reaches the socket
		// (and its user is an allowed peer, see sdsUsers).
		if err := os.Chown(a.cfg.SDSSocket, -1, int(*a.cfg.Envoy.GID)); err != nil {
			return fmt.Errorf("agent: SDS socket: %w", err)
		}
		if err := os.Chmod(a.cfg.SDSSocket, 0o660); err != nil {
			return fmt.Errorf("agent: SDS socket: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sdsDone := make(chan error, 1)
	go func() { sdsDone <- a.sds.Serve(ctx, lis) }()

	if a.cfg.BootstrapPath != "" {
		if err := a.writeBootstrap(); err != nil {
			return err
		}
	}
	var envoyDone <-chan struct{}
	if a.cfg.Envoy != nil {
		p, err := a.startEnvoy()
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.envoy = p
		a.mu.Unlock()
		envoyDone = p.Done()
		defer func() { _ = p.Stop(10 * time.Second) }()
	}
	close(a.ready)
	watchDone := make(chan struct{})
	go func() { a.watchBundle(ctx); close(watchDone) }()
	defer func() { cancel(); <-watchDone }()

	obtained := a.cfg.Now()
	retry := backoff{base: time.Second, rand: a.random}
	// renewAt is a moment, not a duration: a wake-up from the bundle
	// watch must not push the renewal back by the time already waited.
	renewAt := RenewAt(obtained, svid.Certificates[0].NotAfter, a.random())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-envoyDone:
			return errors.New("agent: envoy exited")
		case err := <-sdsDone:
			if ctx.Err() != nil {
				return nil // it stopped because we are stopping
			}
			return fmt.Errorf("agent: SDS server stopped: %w", err)
		case <-a.renewWake:
			// The bundle watch asks for an earlier renewal: wait the
			// shorter of the two.
			a.mu.Lock()
			by := a.renewBy
			a.renewBy = time.Time{}
			a.mu.Unlock()
			if !by.IsZero() && by.Before(renewAt) {
				renewAt = by
			}
			continue
		case <-a.cfg.After(max(renewAt.Sub(a.cfg.Now()), 0)):
		}
		next, nbundle, err := a.fetch(ctx, svid)
		if status.Code(err) == codes.PermissionDenied && a.cfg.ServiceAccountTokenFile != "" {
			// The certificate is no credential any more (its authority
			// was revoked or removed): prove the identity again with the
			// pod's token, as for the first certificate. (A join token
			// works once; without a token file the operator hands the
			// workload a new one.)
			a.log.Warn("renewal with the current certificate refused; attesting again with the ServiceAccount token", "err", err)
			next, nbundle, err = a.fetch(ctx, nil)
		}
		if err != nil {
			// Back off, but retry at least ten times in what is left of
			// the certificate's life (and at least once a minute), unless
			// the control plane said when to come back.
			left := svid.Certificates[0].NotAfter.Sub(a.cfg.Now())
			wait := retry.wait(err, min(time.Minute, max(left/10, time.Second)))
			renewAt = a.cfg.Now().Add(wait)
			a.log.Error("certificate renewal failed; retrying", "err", err, "in", wait.Round(time.Millisecond),
				"expires_in", left.Round(time.Second))
			continue
		}
		retry.reset()
		// The answer's bundle is installed only if it is newer than the
		// one the watch brought; one that cannot be keeps the one held.
		if err := a.installBundle(nbundle); err != nil {
			a.log.Error("trust bundle refused; keeping the one held", "err", err)
		}
		if err := a.install(next); err != nil {
			return err
		}
		svid, obtained = next, a.cfg.Now()
		renewAt = RenewAt(obtained, svid.Certificates[0].NotAfter, a.random())
	}
}

// renewSoon asks the renewal loop to renew within d.
func (a *Agent) renewSoon(d time.Duration) {
	by := a.cfg.Now().Add(d)
	a.mu.Lock()
	if a.renewBy.IsZero() || by.Before(a.renewBy) {
		a.renewBy = by
	}
	a.mu.Unlock()
	select {
	case a.renewWake <- struct{}{}:
	default: // the loop has a wake-up pending already
	}
}

// RenewAt returns when to renew a certificate obtained at obtained and
// valid until notAfter: at half its remaining lifetime, moved by up to a
// tenth of it either way (r in [0,1)), so a fleet started together does
// not renew together. (Counting from when it was obtained, not from its
// NotBefore, which the CA backdates for clock skew.)
func RenewAt(obtained, notAfter time.Time, r float64) time.Time {
	life := notAfter.Sub(obtained)
	frac := 0.5 + (r-0.5)*0.2
	return obtained.Add(time.Duration(math.Round(float64(life) * frac)))
}

// sleep waits d on the agent's clock; false if ctx ended first.
func (a *Agent) sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-a.cfg.After(d):
		return true
	}
}

// firstCertificate fetches with the join token, waiting for a control
// plane that is not up yet but giving up at once on a refused credential:
// a join token works once, and retrying cannot fix it.
func (a *Agent) firstCertificate(ctx context.Context) (*x509svid.SVID, heldBundle, error) {
	if a.cfg.JoinToken == "" && a.cfg.ServiceAccountTokenFile == "" {
		return nil, heldBundle{}, errors.New("agent: no credential for the first certificate: give it a join token or a ServiceAccount token file")
	}
	retry := backoff{base: 200 * time.Millisecond, rand: a.random}
	for {
		svid, bundle, err := a.fetch(ctx, nil)
		if err == nil {
			return svid, bundle, nil
		}
		switch status.Code(err) {
		case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition:
			return nil, heldBundle{}, fmt.Errorf("agent: the control plane refused the first certificate: %w", err)
		}
		wait := retry.wait(err, 5*time.Second)
		a.log.Warn("control plane not reachable, not ready or busy; retrying", "err", err, "in", wait.Round(time.Millisecond))
		if !a.sleep(ctx, wait) {
			return nil, heldBundle{}, ctx.Err()
		}
	}
}

// heldBundle is a trust bundle as the agent holds it.
type heldBundle struct {
	seq   uint64
	roots []*x509.Certificate
	crls  [][]byte
}

// anchors returns the roots the control plane is verified with: the
// latest bundle's.
func (a *Agent) anchors() *x509bundle.Bundle {
	a.mu.Lock()
	defer a.mu.Unlock()
	return x509bundle.FromX509Authorities(a.td, a.bundle)
}

// fetch generates a new key and has the CA sign it. With current set it
// authenticates with that certificate, otherwise with the join token.
func (a *Agent) fetch(ctx context.Context, current *x509svid.SVID) (*x509svid.SVID, heldBundle, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, heldBundle{}, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, heldBundle{}, err
	}
	anchors := a.anchors()
	var tlsCfg = spiffetls.ClientConfig(nil, anchors, a.cfg.ControlPlaneID)
	if current != nil {
		tlsCfg = spiffetls.ClientConfig(current, anchors, a.cfg.ControlPlaneID)
	}
	conn, err := grpc.NewClient(a.cfg.ControlPlane, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, heldBundle{}, err
	}
	defer conn.Close()
	if current == nil {
		cred := contract.JoinTokenScheme + " " + a.cfg.JoinToken
		if a.cfg.ServiceAccountTokenFile != "" {
			tok, err := os.ReadFile(a.cfg.ServiceAccountTokenFile)
			if err != nil {
				return nil, heldBundle{}, fmt.Errorf("agent: ServiceAccount token: %w", err)
			}
			cred = contract.ServiceAccountTokenScheme + " " + strings.TrimSpace(string(tok))
		}
		ctx = metadata.AppendToOutgoingContext(ctx, contract.AuthorizationKey, cred)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, &cav1.SignCertificateRequest{
		Csr: csr, Workload: a.cfg.Workload, TtlSeconds: int64(a.cfg.CertTTL / time.Second),
	})
	if err != nil {
		return nil, heldBundle{}, err
	}
	svid, err := x509svid.ParseRaw(concat(resp.GetCertChain()), mustPKCS8(key))
	if err != nil {
		return nil, heldBundle{}, fmt.Errorf("agent: the CA's answer is not an X.509-SVID: %w", err)
	}
	roots, err := parseCerts(resp.GetTrustBundle())
	if err != nil {
		return nil, heldBundle{}, fmt.Errorf("agent: trust bundle: %w", err)
	}
	// Trust but verify: the chain must verify against the anchors this
	// agent verified the control plane with.
	if _, _, err := x509svid.Verify(svid.Certificates, anchors); err != nil {
		return nil, heldBundle{}, fmt.Errorf("agent: the certificate does not verify against the trust anchors: %w", err)
	}
	return svid, heldBundle{seq: resp.GetBundleSequence(), roots: roots, crls: resp.GetCrls()}, nil
}

func parseCerts(ders [][]byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// install serves a new certificate over SDS.
func (a *Agent) install(svid *x509svid.SVID) error {
	if err := a.sds.UpdateCertificate(svid.Certificates, svid.PrivateKey); err != nil {
		return fmt.Errorf("agent: SDS: %w", err)
	}
	a.mu.Lock()
	a.svid = svid
	close(a.certCh)
	a.certCh = make(chan struct{})
	a.mu.Unlock()
	leaf := svid.Certificates[0]
	a.log.Info("certificate installed", "id", svid.ID, "serial", leaf.SerialNumber.Text(16),
		"expires", leaf.NotAfter.Format(time.RFC3339))
	return nil
}

// installBundle serves a trust bundle over SDS, unless the agent holds
// one at least as new already (a renewal's answer after a push), and
// makes its roots the anchors the control plane is verified with.
func (a *Agent) installBundle(b heldBundle) error {
	a.mu.Lock()
	held, seq := a.svid != nil, a.bundleSeq
	a.mu.Unlock()
	if held && b.seq <= seq {
		return nil
	}
	if len(b.roots) == 0 {
		return fmt.Errorf("agent: trust bundle %d has no root", b.seq)
	}
	if held {
		// Envoy takes a CRL outside its validity (thisUpdate ahead of
		// this host's clock, nextUpdate past) without complaint, and then
		// refuses every leaf of its issuer: keep the bundle held instead,
		// which the control plane sees in the acks.
		if err := checkCRLTimes(b.crls, a.cfg.Now()); err != nil {
			return fmt.Errorf("agent: trust bundle %d: %w", b.seq, err)
		}
	}
	if err := a.sds.UpdateBundle(b.seq, b.roots, b.crls); err != nil {
		return fmt.Errorf("agent: SDS: %w", err)
	}
	a.mu.Lock()
	a.bundle, a.crls, a.bundleSeq = b.roots, b.crls, b.seq
	a.mu.Unlock()
	a.log.Info("trust bundle installed", "sequence", b.seq, "roots", len(b.roots), "crls", len(b.crls))
	return nil
}

func (a *Agent) writeBootstrap() error {
	b, err := bootstrap.Build(bootstrap.Config{
		NodeID: a.cfg.Workload, XDSAddress: a.cfg.ControlPlane, AdminAddress: a.cfg.AdminAddress,
		SDSSocket: a.cfg.SDSSocket, ControlPlaneID: a.cfg.ControlPlaneID.String(),
	})
	if err != nil {
		return err
	}
	y, err := bootstrap.YAML(b)
	if err != nil {
		return err
	}
	return os.WriteFile(a.cfg.BootstrapPath, y, 0o644)
}

func (a *Agent) startEnvoy() (*envoy.Process, error) {
	e := a.cfg.Envoy
	if a.cfg.BootstrapPath == "" {
		return nil, errors.New("agent: running Envoy needs a bootstrap path")
	}
	cfg := envoy.Config{Bin: e.Bin, ConfigPath: a.cfg.BootstrapPath, AdminAddress: a.cfg.AdminAddress,
		LogLevel: e.LogLevel, Stdout: e.Stdout, Stderr: e.Stderr, ExtraArgs: append(drainArgs(), e.ExtraArgs...)}
	if e.UID != nil || e.GID != nil {
		cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
		if e.UID != nil {
			cred.Uid = *e.UID
		}
		if e.GID != nil {
			cred.Gid = *e.GID
		}
		cfg.Credential = cred
	}
	return envoy.Start(cfg)
}

// Envoy returns the Envoy the agent runs, or nil.
func (a *Agent) Envoy() *envoy.Process {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.envoy
}

func concat(ders [][]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, d...)
	}
	return out
}

func mustPKCS8(key *ecdsa.PrivateKey) []byte {
	b, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(fmt.Sprintf("agent: marshal key: %v", err))
	}
	return b
}
