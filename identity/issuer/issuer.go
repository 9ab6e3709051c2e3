// Package issuer is the CA service: it authenticates the caller, decides
// which identity the caller is, and has the CA sign the caller's public
// key for exactly that identity. The identity comes from the credential
// (a join token bound to a workload, or the caller's current certificate)
// and the model (that workload's service account), never from the
// request: a request that asks for anything else is refused.
//
// It also hands out the trust bundle (roots and CRLs, with a sequence)
// in every answer and over WatchTrustBundle, keeps per workload what its
// agent and Envoy acknowledged (BundleReports), and refuses revoked
// callers both.
package issuer

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// Signer is what the issuer needs of a CA.
type Signer interface {
	TrustDomain() spiffeid.TrustDomain
	Roots() []*x509.Certificate
	SignSVID(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error)
	// SignWorkloadSVID signs a workload's certificate, which also names
	// the workload, for ca.WorkloadOf to read back (see ca.CA's).
	SignWorkloadSVID(pub crypto.PublicKey, id spiffeid.ID, w ca.Workload, ttl time.Duration) ([]*x509.Certificate, error)
}

// TokenRedeemer uses up a one-time join token bound to a workload.
type TokenRedeemer interface {
	Redeem(token, workload string) error
}

// ServiceAccountIdentity is what a Kubernetes ServiceAccount token proves:
// the service account, and the pod the token is bound to.
type ServiceAccountIdentity struct {
	Namespace, ServiceAccount, Pod string
}

// ServiceAccountReviewer checks a ServiceAccount token (TokenReview).
type ServiceAccountReviewer interface {
	Review(ctx context.Context, token string) (ServiceAccountIdentity, error)
}

// Config configures a Server.
type Config struct {
	CA    Signer       // required
	Store *model.Store // required: which workloads exist, and their service accounts
	// Tokens redeems join tokens; nil refuses them.
	Tokens TokenRedeemer
	// ServiceAccounts checks ServiceAccount tokens; nil refuses them.
	ServiceAccounts ServiceAccountReviewer
	// Reserved are identities never issued to a workload: the control
	// plane's own (the one it serves with, when an operator named
	// another). contract.ControlPlaneID of the CA's trust domain is
	// always reserved, listed here or not.
	Reserved []spiffeid.ID
	// Synced is closed once the sources have synced. A request that comes
	// before waits for it, at most SyncWait (default 15s) or until the
	// caller gives up, and is then asked to come back (Unavailable). Nil:
	// synced already.
	Synced     <-chan struct{}
	SyncWait   time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// RateLimit bounds issuance per SPIFFE ID and in total; the zero
	// value means the defaults (see ratelimit.go).
	RateLimit RateLimit
	// Now is the clock the issuer records issuance times and fills its
	// rate limit buckets with; defaults to time.Now. (Certificate
	// lifetimes are the CA's clock, not this.)
	Now func() time.Time
	// Bundles is the trust bundle handed out (roots and CRLs, in every
	// answer and over WatchTrustBundle). Nil: the CA's roots, at sequence
	// 0, without CRLs, never changing.
	Bundles BundleSource
	// Revoked says whether a caller is revoked: it is then refused a
	// certificate, whatever its credential, and the trust bundle stream.
	// Nil: nothing is revoked.
	Revoked RevokedFunc
	// Vouches checks the authority behind a certificate presented as a
	// credential (renewal, bundle watch); nil accepts every certificate
	// that chains to the bundle's roots.
	Vouches VouchFunc
	// MaxBundleWatchers caps the open WatchTrustBundle streams; zero
	// means DefaultMaxBundleWatchers, negative no limit. (Each workload
	// has at most MaxBundleWatchesPerWorkload.)
	MaxBundleWatchers int
}

// Server implements the CertificateService.
type Server struct {
	cav1.UnimplementedCertificateServiceServer
	cfg              Config
	log              *slog.Logger
	requests         *prometheus.CounterVec
	limits           *limiter
	reservedRefusals prometheus.Counter
	bundles          BundleSource
	watch            *watchers

	// history is what this server issued: the latest certificate per
	// workload (Certificates) and every one still valid (IssuedTo).
	history issuedHistory
}

// Issued describes the latest certificate this server issued to a
// workload: what an operator checks to see that rotation works.
type Issued struct {
	// Workload is the namespace/name the request named, which its
	// credential is bound to: a join token or ServiceAccount token names
	// it, and a certificate renews only the workload it names (see
	// ca.WorkloadOf), so one workload cannot overwrite the record of
	// another with the same identity.
	Workload string    `json:"workload"`
	ID       string    `json:"id"`
	Serial   string    `json:"serial"`
	Method   string    `json:"method"`
	IssuedAt time.Time `json:"issuedAt"`
	Expires  time.Time `json:"expires"`
}

// Certificates returns the latest certificate issued to each workload
// still in the model, sorted by workload.
func (s *Server) Certificates() []Issued {
	out := s.history.latest(s.cfg.Store, s.cfg.Now())
	slices.SortFunc(out, func(a, b Issued) int { return strings.Compare(a.Workload, b.Workload) })
	return out
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.CA == nil || cfg.Store == nil {
		return nil, errors.New("issuer: CA and Store are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "issuer"),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_issuer_requests_total",
			Help: "CA service requests: certificate signing requests by how the caller authenticated (method) and the result " +
				"(a status code, or revoked), and trust bundle streams (method watch).",
		}, []string{"method", "result"}),
		reservedRefusals: newReservedRefusals()}
	s.limits = newLimiter(cfg.RateLimit, cfg.Now)
	s.bundles = cfg.Bundles
	if s.bundles == nil {
		s.bundles = staticBundle{cfg.CA}
	}
	maxWatchers := cfg.MaxBundleWatchers
	if maxWatchers == 0 {
		maxWatchers = DefaultMaxBundleWatchers
	}
	s.watch = newWatchers(maxWatchers)
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.requests, s.limits.limited, s.reservedRefusals, s.watch.gauge, s.watch.acks)
		cfg.Registerer.MustRegister(expiryCollector{s})
	}
	return s, nil
}

// Register adds the service to g.
func (s *Server) Register(g grpc.ServiceRegistrar) { cav1.RegisterCertificateServiceServer(g, s) }

// SignCertificate authenticates the caller and signs its key. A caller
// without a certificate authenticates with contract.AuthorizationKey
// metadata in one of the contract's schemes.
func (s *Server) SignCertificate(ctx context.Context, req *cav1.SignCertificateRequest) (*cav1.SignCertificateResponse, error) {
	method := "none"
	resp, id, err := s.sign(ctx, req, &method)
	if err != nil {
		// Every value in the refusal may come from the caller: the log
		// line and the answer are bounded whatever it sent.
		result := status.Code(err).String()
		if errors.As(err, new(errRevoked)) {
			result = resultRevoked
		}
		err = boundStatus(err)
		s.requests.WithLabelValues(method, result).Inc()
		level := slog.LevelWarn
		if status.Code(err) == codes.ResourceExhausted {
			// A caller over its rate would otherwise buy a log line per
			// refused request; the metrics count them.
			level = slog.LevelDebug
		}
		s.log.Log(ctx, level, "certificate refused", "workload", quote(req.GetWorkload()), "method", method, "err", status.Convert(err).Message())
		return nil, err
	}
	s.requests.WithLabelValues(method, "OK").Inc()
	leaf, _ := x509.ParseCertificate(resp.GetCertChain()[0])
	// Issued: the workload is a valid node ID, short and plain.
	s.log.Info("certificate issued", "workload", req.GetWorkload(), "id", id, "method", method,
		"serial", leaf.SerialNumber.Text(16), "expires", leaf.NotAfter.Format(time.RFC3339))
	s.history.add(s.cfg.Store, Issued{Workload: req.GetWorkload(), ID: id, Serial: leaf.SerialNumber.Text(16),
		Method: method, IssuedAt: s.cfg.Now(), Expires: leaf.NotAfter}, leaf, s.cfg.Now())
	return resp, nil
}

func (s *Server) sign(ctx context.Context, req *cav1.SignCertificateRequest, method *string) (*cav1.SignCertificateResponse, string, error) {
	if err := checkSize(ctx, req); err != nil {
		return nil, "", err
	}
	if s.cfg.Synced != nil {
		wait := s.cfg.SyncWait
		if wait <= 0 {
			wait = 15 * time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-s.cfg.Synced:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return nil, "", status.Error(codes.Unavailable, "the control plane is still syncing its sources; retry")
		case <-t.C:
			return nil, "", status.Error(codes.Unavailable, "the control plane is still syncing its sources; retry")
		}
	}
	// Nothing is spent on a request while issuance is at its limit.
	if err := s.limits.gate(); err != nil {
		return nil, "", err
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, "", status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", status.Errorf(codes.InvalidArgument, "csr: signature does not verify, so it proves no key: %v", err)
	}
	ns, name, ok := model.ParseNodeID(req.GetWorkload())
	if !ok {
		return nil, "", status.Errorf(codes.InvalidArgument, "workload %s is not namespace/name", quote(req.GetWorkload()))
	}
	td := s.cfg.CA.TrustDomain()

	// A revoked workload, or the certificate presented, is refused before
	// a credential is spent on it (a join token is used up once redeemed,
	// a ServiceAccount token costs a TokenReview); the identity it would
	// get is checked once known.
	serial := ""
	if leaf := peerLeaf(ctx); leaf != nil {
		serial = leaf.SerialNumber.Text(16)
	}
	revokedWorkload := func() error { return s.checkRevoked(serial, spiffeid.ID{}, req.GetWorkload()) }

	// Who is calling: a certificate already issued to it, or a join token.
	var peerID spiffeid.ID
	var peerWorkload *ca.Workload // the workload the caller's certificate names, if it names one
	saIdentity := ""              // the service account a ServiceAccount token proved
	switch pid, perr := spiffetls.PeerID(ctx); {
	case perr == nil:
		*method = "certificate"
		if err := revokedWorkload(); err != nil {
			return nil, "", err
		}
		if err := s.checkVouched(peerLeaf(ctx)); err != nil {
			return nil, "", err
		}
		peerID = pid
		if leaf := peerLeaf(ctx); leaf != nil {
			if w, ok := ca.WorkloadOf(leaf); ok {
				peerWorkload = &w
			}
		}
	case bearer(ctx, contract.JoinTokenScheme) != "":
		*method = "join_token"
		if s.cfg.Tokens == nil {
			return nil, "", status.Error(codes.Unauthenticated, "join tokens are not accepted here")
		}
		if err := revokedWorkload(); err != nil {
			return nil, "", err
		}
		if err := s.cfg.Tokens.Redeem(bearer(ctx, contract.JoinTokenScheme), req.GetWorkload()); err != nil {
			return nil, "", status.Errorf(codes.Unauthenticated, "%v", err)
		}
	case bearer(ctx, contract.ServiceAccountTokenScheme) != "":
		*method = "serviceaccount_token"
		if s.cfg.ServiceAccounts == nil {
			return nil, "", status.Error(codes.Unauthenticated, "ServiceAccount tokens are not accepted here")
		}
		if err := revokedWorkload(); err != nil {
			return nil, "", err
		}
		sa, err := s.cfg.ServiceAccounts.Review(ctx, bearer(ctx, contract.ServiceAccountTokenScheme))
		if err != nil {
			return nil, "", status.Errorf(codes.Unauthenticated, "%v", err)
		}
		if sa.Namespace != ns || sa.Pod != name {
			return nil, "", status.Errorf(codes.PermissionDenied, "the token is bound to pod %s/%s, not %s", sa.Namespace, sa.Pod, req.GetWorkload())
		}
		saIdentity = sa.ServiceAccount
	default:
		return nil, "", status.Errorf(codes.Unauthenticated, "no credential: send %q or %q metadata, or present your current certificate",
			contract.AuthorizationKey+": "+contract.JoinTokenScheme+" <token>", contract.AuthorizationKey+": "+contract.ServiceAccountTokenScheme+" <token>")
	}

	// Which identity that makes it: the service account of the workload,
	// as the model has it now.
	snap := s.cfg.Store.Snapshot()
	if mtd := snap.Mesh().TrustDomain; mtd != td.String() {
		return nil, "", status.Errorf(codes.FailedPrecondition, "the mesh's trust domain %s is not the CA's %s", mtd, td)
	}
	w := snap.Workload(ns, name)
	if w == nil {
		if *method == "serviceaccount_token" {
			// The API server vouched for the pod; the model may just not
			// have caught up with it (a pod starting as its namespace
			// joins the mesh): ask the agent to come back, as it does.
			return nil, "", status.Errorf(codes.Unavailable, "pod %s is not in the mesh (not yet, or its namespace is not in the mesh); retry", req.GetWorkload())
		}
		return nil, "", status.Errorf(codes.PermissionDenied, "workload %s is not in the mesh", req.GetWorkload())
	}
	id := w.Identity(td.String())
	if err := s.checkReserved(id, req.GetWorkload(), *method); err != nil {
		return nil, "", err
	}
	if err := s.checkRevoked(serial, id, req.GetWorkload()); err != nil {
		return nil, "", err
	}
	if !peerID.IsZero() && peerID != id {
		return nil, "", status.Errorf(codes.PermissionDenied, "your certificate is %s, but workload %s is %s", peerID, req.GetWorkload(), id)
	}
	if peerWorkload != nil && peerWorkload.String() != req.GetWorkload() {
		return nil, "", status.Errorf(codes.PermissionDenied, "your certificate was issued to workload %s; it renews %s only, not %s",
			peerWorkload, peerWorkload, req.GetWorkload())
	}
	if saIdentity != "" && saIdentity != w.ServiceAccount {
		return nil, "", status.Errorf(codes.PermissionDenied, "the token is for service account %s, but workload %s runs as %s", saIdentity, req.GetWorkload(), w.ServiceAccount)
	}

	// The CSR may not ask for anything else.
	switch {
	case len(csr.URIs) > 1:
		return nil, "", status.Errorf(codes.PermissionDenied, "csr asks for %d URI SANs; a workload has exactly one identity, %s", len(csr.URIs), id)
	case len(csr.URIs) == 1 && csr.URIs[0].String() != id.String():
		return nil, "", status.Errorf(codes.PermissionDenied, "csr asks for %s; you are %s", quote(csr.URIs[0].String()), id)
	}

	if err := s.limits.take(id.String(), *method == "join_token"); err != nil {
		return nil, "", err
	}
	chain, err := s.cfg.CA.SignWorkloadSVID(csr.PublicKey, id, ca.Workload{Namespace: ns, Name: name}, time.Duration(req.GetTtlSeconds())*time.Second)
	if err != nil {
		return nil, "", status.Errorf(codes.InvalidArgument, "%v", err)
	}
	resp := &cav1.SignCertificateResponse{SpiffeId: id.String()}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, c.Raw)
	}
	b, _ := s.bundles.Bundle()
	for _, r := range b.Roots {
		resp.TrustBundle = append(resp.TrustBundle, r.Raw)
	}
	resp.BundleSequence, resp.Crls = b.Sequence, b.CRLs
	return resp, id.String(), nil
}

// expiryCollector exports, per workload, when the latest certificate
// this server issued to it expires. Read at scrape time, so a workload
// that left the mesh leaves no series behind.
type expiryCollector struct{ s *Server }

var expiryDesc = prometheus.NewDesc("bulwark_issuer_workload_certificate_expiry_timestamp_seconds",
	"Unix time at which the latest certificate this control plane issued to the workload expires. "+
		"Agents renew with 40-60% of the lifetime left; with several replicas, take the max by workload.",
	[]string{"workload"}, nil)

func (c expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- expiryDesc }

func (c expiryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, cert := range c.s.Certificates() {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(cert.Expires.Unix()), cert.Workload)
	}
}

// peerLeaf returns the caller's certificate, or nil. (The server's TLS
// configuration verified it against the bundle before the handshake
// completed, as for spiffetls.PeerID.)
func peerLeaf(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

// bearer returns the credential of the given scheme from the
// authorization metadata, or "".
func bearer(ctx context.Context, scheme string) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(contract.AuthorizationKey) {
		if s, cred, ok := strings.Cut(v, " "); ok && strings.EqualFold(s, scheme) {
			return strings.TrimSpace(cred)
		}
	}
	return ""
}
