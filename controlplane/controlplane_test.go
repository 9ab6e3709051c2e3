package controlplane_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

const exampleMesh = "../examples/local/mesh.yaml"

var meshTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// ownCA is a CA the caller brings, as a Vault- or HSM-backed one would
// be: it signs with package ca's CA and counts what it is asked.
type ownCA struct {
	*ca.CA
	signed, serving atomic.Int32
}

var _ controlplane.Authority = (*ownCA)(nil)

func (o *ownCA) SignWorkloadSVID(pub crypto.PublicKey, id spiffeid.ID, w ca.Workload, ttl time.Duration) ([]*x509.Certificate, error) {
	o.signed.Add(1)
	return o.CA.SignWorkloadSVID(pub, id, w, ttl)
}

func (o *ownCA) ServingSource(ctx context.Context, id spiffeid.ID) (controlplane.SVIDSource, error) {
	o.serving.Add(1)
	return o.NewSource(ctx, id, time.Hour, nil)
}

func newCA(t *testing.T, td spiffeid.TrustDomain) (*ca.CA, string) {
	t.Helper()
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td}})
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func start(t *testing.T, cfg controlplane.Config) *controlplane.ControlPlane {
	t.Helper()
	cfg.MeshPaths = []string{exampleMesh}
	cfg.XDSAddress = "127.0.0.1:0"
	cfg.Logger = testlog.New(t)
	cp, err := controlplane.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	return cp
}

// signWithJoinToken asks the control plane's CA service for a
// certificate as an agent's first request does, trusting only roots and
// only the control plane's identity.
func signWithJoinToken(t *testing.T, cp *controlplane.ControlPlane, roots []*x509.Certificate, workload string) *x509.Certificate {
	t.Helper()
	tok, err := cp.Tokens.Create(workload, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tc := spiffetls.ClientConfig(nil, x509bundle.FromX509Authorities(meshTD, roots), cp.Identity)
	_, leaf, err := requestCert(t, cp, tc, workload, tok)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// TestStartUsesTheCAItIsGiven: a CA passed in Config signs workloads'
// certificates and the control plane's own, and nothing is read from a
// CA directory.
func TestStartUsesTheCAItIsGiven(t *testing.T) {
	c, _ := newCA(t, meshTD)
	own := &ownCA{CA: c}
	cp := start(t, controlplane.Config{CA: own, TokenDir: t.TempDir()})

	if cp.CA != controlplane.Authority(own) {
		t.Errorf("cp.CA is %T, not the CA given", cp.CA)
	}
	if want := contract.ControlPlaneID(meshTD); cp.Identity != want {
		t.Errorf("identity %s, want %s", cp.Identity, want)
	}
	if n := own.serving.Load(); n != 1 {
		t.Errorf("ServingSource called %d times, want once", n)
	}
	// The TLS handshake succeeds only if the control plane presents its
	// identity, signed by the given CA.
	leaf := signWithJoinToken(t, cp, c.Roots(), "demo/frontend-1")
	if got, want := leaf.URIs[0].String(), "spiffe://cluster.local/ns/demo/sa/frontend"; got != want {
		t.Errorf("issued %s, want %s", got, want)
	}
	if n := own.signed.Load(); n != 1 {
		t.Errorf("the given CA signed %d workload certificates, want 1", n)
	}
}

// TestStartDefaultsToTheFileCA: without Config.CA, the CA is the one in
// CADir, and the tokens live beside it.
func TestStartDefaultsToTheFileCA(t *testing.T) {
	_, dir := newCA(t, meshTD)
	cp := start(t, controlplane.Config{CADir: dir})
	rootPEM, err := os.ReadFile(filepath.Join(dir, ca.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := pemutil.EncodeCerts(cp.CA.Roots()); string(got) != string(rootPEM) {
		t.Error("the control plane's roots are not the CA directory's")
	}
	if cp.CADir != dir {
		t.Errorf("CADir %q, want %q", cp.CADir, dir)
	}
	signWithJoinToken(t, cp, cp.CA.Roots(), "demo/api-1")
	if _, err := os.Stat(filepath.Join(dir, "tokens")); err != nil {
		t.Errorf("join tokens are not kept in CADir/tokens: %v", err)
	}
}

func TestStartRefuses(t *testing.T) {
	sameTD, _ := newCA(t, meshTD)
	otherTD, _ := newCA(t, spiffeid.RequireTrustDomainFromString("example.org"))
	for _, tc := range []struct {
		name string
		cfg  controlplane.Config
		want string
	}{
		{"no CA and no CADir", controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0"}, "CADir is required"},
		{"a given CA and nowhere for tokens", controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0", CA: &ownCA{CA: sameTD}}, "TokenDir"},
		{"a given CA and MaxCertTTL", controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0", CA: &ownCA{CA: sameTD},
			TokenDir: t.TempDir(), MaxCertTTL: time.Hour}, "MaxCertTTL"},
		{"a given CA of another trust domain", controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0", CA: &ownCA{CA: otherTD},
			TokenDir: t.TempDir()}, `trust domain "example.org"`},
		{"an identity outside the trust domain", controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0", CA: &ownCA{CA: sameTD},
			TokenDir: t.TempDir(), Identity: "spiffe://example.org/cp"}, "is not a SPIFFE ID in cluster.local"},
		{"an identity a workload of the mesh has", controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0", CA: &ownCA{CA: sameTD},
			TokenDir: t.TempDir(), Identity: "spiffe://cluster.local/ns/demo/sa/api"},
			"workload demo/api-1: service account api in namespace demo is the control plane's own identity (spiffe://cluster.local/ns/demo/sa/api, --identity)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Logger = testlog.New(t)
			cp, err := controlplane.Start(context.Background(), tc.cfg)
			if err == nil {
				_ = cp.Stop()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}
