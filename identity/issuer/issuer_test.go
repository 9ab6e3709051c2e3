package issuer_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/identity/attest"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

var (
	td         = spiffeid.RequireTrustDomainFromString("cluster.local")
	cpID       = contract.ControlPlaneID(td)
	frontendID = "spiffe://cluster.local/ns/demo/sa/frontend"
	apiID      = "spiffe://cluster.local/ns/demo/sa/api"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type env struct {
	iss    *issuer.Server
	store  *model.Store
	addr   string
	ca     *ca.CA
	cp     *ca.Source
	tokens *attest.JoinTokens
	clock  *fakeClock
}

func setup(t *testing.T, opts ...func(*issuer.Config)) *env {
	t.Helper()
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	authority, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	own, err := authority.NewSource(ctx, cpID, time.Hour, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Now()}
	tokens, err := attest.NewJoinTokens(t.TempDir(), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	store := model.NewStore()
	st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local"}}
	for _, w := range []struct{ name, sa string }{{"frontend-1", "frontend"}, {"api-1", "api"}} {
		st.Workloads = append(st.Workloads, &model.Workload{Namespace: "demo", Name: w.name, ServiceAccount: w.sa, Address: "10.0.0.1", LocalAddress: "127.0.0.1"})
	}
	if _, err := store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	cfg := issuer.Config{CA: authority, Store: store, Tokens: tokens, Logger: testlog.New(t), Now: clock.Now}
	for _, o := range opts {
		o(&cfg)
	}
	iss, err := issuer.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, own, td))))
	iss.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return &env{iss: iss, store: store, addr: lis.Addr().String(), ca: authority, cp: own, tokens: tokens, clock: clock}
}

type request struct {
	token    string
	svid     *x509svid.SVID // present this certificate
	workload string
	csr      *x509.CertificateRequest
	ttl      time.Duration
}

func (e *env) sign(t *testing.T, r request) (*x509.Certificate, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := r.csr
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	var tc *tls.Config
	if r.svid != nil {
		tc = spiffetls.ClientConfig(r.svid, e.cp, cpID)
	} else {
		tc = spiffetls.ClientConfig(nil, e.cp, cpID)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if r.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "JoinToken "+r.token)
	}
	resp, err := cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, &cav1.SignCertificateRequest{
		Csr: der, Workload: r.workload, TtlSeconds: int64(r.ttl / time.Second)})
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(resp.GetCertChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	// Whatever was asked, what comes back is the caller's own, valid SVID.
	var chain []*x509.Certificate
	for _, d := range resp.GetCertChain() {
		c, _ := x509.ParseCertificate(d)
		chain = append(chain, c)
	}
	if err := ca.CheckSVID(chain, e.ca.Roots(), td, time.Now()); err != nil {
		t.Errorf("issued certificate breaks the profile: %v", err)
	}
	if resp.GetSpiffeId() != leaf.URIs[0].String() {
		t.Errorf("response says %s, certificate says %s", resp.GetSpiffeId(), leaf.URIs[0])
	}
	return leaf, nil
}

func (e *env) token(t *testing.T, workload string) string {
	t.Helper()
	tok, err := e.tokens.Create(workload, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func wantRefused(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("got %v, want %s mentioning %q", err, code, msg)
	}
}

func TestJoinTokenGetsTheWorkloadsOwnIdentity(t *testing.T) {
	e := setup(t)
	leaf, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"})
	if err != nil {
		t.Fatal(err)
	}
	if leaf.URIs[0].String() != frontendID {
		t.Errorf("issued %s, want %s", leaf.URIs[0], frontendID)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 24*time.Hour {
		t.Errorf("lifetime %s above 24h", life)
	}
}

// TestRequestBeforeSyncWaitsForIt: an agent that asks while the sources
// are still syncing is answered once they have, not refused.
func TestRequestBeforeSyncWaitsForIt(t *testing.T) {
	synced := make(chan struct{})
	e := setup(t, func(c *issuer.Config) { c.Synced = synced })
	tok := e.token(t, "demo/frontend-1")
	type result struct {
		leaf *x509.Certificate
		err  error
	}
	done := make(chan result, 1)
	go func() {
		leaf, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"})
		done <- result{leaf, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("answered before the sources synced: %v", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	close(synced)
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.leaf.URIs[0].String() != frontendID {
			t.Errorf("issued %s, want %s", r.leaf.URIs[0], frontendID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not answered 5s after the sources synced")
	}
}

func TestRequestIsAskedToRetryWhenSyncTakesLong(t *testing.T) {
	e := setup(t, func(c *issuer.Config) { c.Synced, c.SyncWait = make(chan struct{}), 200*time.Millisecond })
	_, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"})
	wantRefused(t, err, codes.Unavailable, "still syncing")
}

// TestCertificatesReportTheLatestPerWorkload: what proxy-status shows is
// the last certificate each workload got, and a workload that left the
// mesh is not reported.
func TestCertificatesReportTheLatestPerWorkload(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := setup(t, func(c *issuer.Config) { c.Registerer = reg })
	expiries := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() == "bulwark_issuer_workload_certificate_expiry_timestamp_seconds" {
				for _, m := range mf.GetMetric() {
					out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
		return out
	}
	if got := e.iss.Certificates(); len(got) != 0 {
		t.Fatalf("before any request: %+v", got)
	}
	if _, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"}); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Minute)
	apiAt := e.clock.Now()
	api, err := e.sign(t, request{token: e.token(t, "demo/api-1"), workload: "demo/api-1"})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Minute)
	secondAt := e.clock.Now()
	second, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"})
	if err != nil {
		t.Fatal(err)
	}
	got := e.iss.Certificates()
	if len(got) != 2 || got[0].Workload != "demo/api-1" || got[1].Workload != "demo/frontend-1" {
		t.Fatalf("certificates = %+v, want api-1 and frontend-1", got)
	}
	if got[1].Serial != second.SerialNumber.Text(16) || got[1].ID != frontendID || !got[1].Expires.Equal(second.NotAfter) {
		t.Errorf("frontend-1: %+v, want the second certificate %s", got[1], second.SerialNumber.Text(16))
	}
	if got[0].Serial != api.SerialNumber.Text(16) || got[0].Method != "join_token" {
		t.Errorf("api-1: %+v", got[0])
	}
	// Issuance times come from the issuer's clock, exactly.
	if !got[0].IssuedAt.Equal(apiAt) || !got[1].IssuedAt.Equal(secondAt) {
		t.Errorf("issued at %s and %s, want %s and %s", got[0].IssuedAt, got[1].IssuedAt, apiAt, secondAt)
	}
	if m := expiries(); len(m) != 2 || m["demo/frontend-1"] != float64(second.NotAfter.Unix()) || m["demo/api-1"] != float64(api.NotAfter.Unix()) {
		t.Errorf("expiry metric = %v", m)
	}

	// api-1 leaves the mesh.
	st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local"}, Workloads: []*model.Workload{
		{Namespace: "demo", Name: "frontend-1", ServiceAccount: "frontend", Address: "10.0.0.1", LocalAddress: "127.0.0.1"}}}
	if _, err := e.store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	if got := e.iss.Certificates(); len(got) != 1 || got[0].Workload != "demo/frontend-1" {
		t.Errorf("after api-1 left: %+v", got)
	}
	if m := expiries(); len(m) != 1 || m["demo/api-1"] != 0 {
		t.Errorf("expiry metric after api-1 left = %v", m)
	}
}

func TestRefusals(t *testing.T) {
	e := setup(t)
	apiSVID := func() *x509svid.SVID {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		chain, err := e.ca.SignSVID(key.Public(), spiffeid.RequireFromString(apiID), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &x509svid.SVID{ID: spiffeid.RequireFromString(apiID), Certificates: chain, PrivateKey: key}
	}

	t.Run("no credential", func(t *testing.T) {
		_, err := e.sign(t, request{workload: "demo/frontend-1"})
		wantRefused(t, err, codes.Unauthenticated, "no credential")
	})
	t.Run("unknown token", func(t *testing.T) {
		_, err := e.sign(t, request{token: "bwjt_not-a-token", workload: "demo/frontend-1"})
		wantRefused(t, err, codes.Unauthenticated, "unknown join token")
	})
	t.Run("reused token", func(t *testing.T) {
		tok := e.token(t, "demo/frontend-1")
		if _, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"}); err != nil {
			t.Fatal(err)
		}
		_, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"})
		wantRefused(t, err, codes.Unauthenticated, "already used")
	})
	t.Run("expired token", func(t *testing.T) {
		tok := e.token(t, "demo/frontend-1")
		e.clock.Add(2 * time.Hour)
		_, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"})
		wantRefused(t, err, codes.Unauthenticated, "expired")
	})
	t.Run("token of another workload", func(t *testing.T) {
		_, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/api-1"})
		wantRefused(t, err, codes.Unauthenticated, "bound to another workload")
	})
	t.Run("token for a workload not in the mesh", func(t *testing.T) {
		_, err := e.sign(t, request{token: e.token(t, "demo/ghost"), workload: "demo/ghost"})
		wantRefused(t, err, codes.PermissionDenied, "not in the mesh")
	})
	t.Run("CSR asks for another identity", func(t *testing.T) {
		_, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1",
			csr: &x509.CertificateRequest{URIs: []*url.URL{mustURL(apiID)}}})
		wantRefused(t, err, codes.PermissionDenied, `csr asks for "`+apiID+`"`)
	})
	t.Run("CSR asks for several URI SANs", func(t *testing.T) {
		_, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1",
			csr: &x509.CertificateRequest{URIs: []*url.URL{mustURL(frontendID), mustURL(apiID)}}})
		wantRefused(t, err, codes.PermissionDenied, "2 URI SANs")
	})
	t.Run("CSR asks for CA:true: overridden", func(t *testing.T) {
		bc, _ := asn1.Marshal(struct {
			IsCA bool `asn1:"optional"`
		}{true})
		leaf, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1",
			csr: &x509.CertificateRequest{Subject: pkix.Name{CommonName: "root"}, ExtraExtensions: []pkix.Extension{
				{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}}}})
		if err != nil {
			t.Fatal(err)
		}
		// The subject names the workload (OU namespace, CN name), never
		// what the CSR asked for.
		if leaf.IsCA || leaf.Subject.CommonName != "frontend-1" || leaf.URIs[0].String() != frontendID {
			t.Errorf("the CSR's wishes leaked into the certificate: CA=%v CN=%q URI=%s", leaf.IsCA, leaf.Subject.CommonName, leaf.URIs[0])
		}
	})
	t.Run("lifetime over the cap: shortened", func(t *testing.T) {
		leaf, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1", ttl: 30 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 24*time.Hour {
			t.Errorf("lifetime %s, want at most 24h", life)
		}
	})
	t.Run("renewal with the caller's own certificate", func(t *testing.T) {
		svid := apiSVID()
		leaf, err := e.sign(t, request{svid: svid, workload: "demo/api-1", ttl: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if leaf.URIs[0].String() != apiID {
			t.Errorf("renewed as %s", leaf.URIs[0])
		}
	})
	t.Run("certificate of one workload renewing another", func(t *testing.T) {
		_, err := e.sign(t, request{svid: apiSVID(), workload: "demo/frontend-1"})
		wantRefused(t, err, codes.PermissionDenied, "your certificate is "+apiID)
	})
	t.Run("a certificate outranks a token: no identity mixing", func(t *testing.T) {
		_, err := e.sign(t, request{svid: apiSVID(), token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"})
		wantRefused(t, err, codes.PermissionDenied, "your certificate is "+apiID)
	})
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
