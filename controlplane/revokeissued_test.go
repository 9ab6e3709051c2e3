package controlplane_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// renew renews workload's certificate presenting the one in tc, as its
// agent does, and returns the configuration with the new certificate and
// the new leaf.
func renew(t *testing.T, cp *controlplane.ControlPlane, tc *tls.Config, workload string) (*tls.Config, *x509.Certificate) {
	t.Helper()
	next, leaf, err := requestCert(t, cp, tc, workload, "")
	if err != nil {
		t.Fatalf("renewal of %s: %v", workload, err)
	}
	return next, leaf
}

// requestCert asks cp for a certificate for workload over tc, presenting
// the certificate in tc if there is one, or else the join token, and
// returns the configuration with the new certificate (trusting cp's
// roots) and the new leaf, or the refusal.
func requestCert(t *testing.T, cp *controlplane.ControlPlane, tc *tls.Config, workload, joinToken string) (*tls.Config, *x509.Certificate, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := ctx10(t)
	if joinToken != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, contract.AuthorizationKey, contract.JoinTokenScheme+" "+joinToken)
	}
	resp, err := cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, &cav1.SignCertificateRequest{Csr: csr, Workload: workload})
	if err != nil {
		return nil, nil, err
	}
	var chain []*x509.Certificate
	for _, der := range resp.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	return spiffetls.ClientConfig(svid, x509bundle.FromX509Authorities(meshTD, cp.CA.Roots()), cp.Identity), chain[0], nil
}

// presented returns the leaf tc presents.
func presented(t *testing.T, tc *tls.Config) *x509.Certificate {
	t.Helper()
	c, err := tc.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// TestRevocationCoversEveryCertificateIssued: a workload renewed twice
// holds three certificates that are all still valid, and a key stolen
// before a renewal came with one of the older ones. Revoking the
// workload puts all three serials on its authority's CRL, not only the
// latest issued or the one presented now.
func TestRevocationCoversEveryCertificateIssued(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	const w = "demo/api-1"
	tc := workloadTLS(t, cp, w)
	first := presented(t, tc)
	tc, second := renew(t, cp, tc, w)
	_, third := renew(t, cp, tc, w)
	want := []string{first.SerialNumber.Text(16), second.SerialNumber.Text(16), third.SerialNumber.Text(16)}

	if _, err := admin.Revoke(ctx10(t), &cav1.RevokeRequest{Kind: "workload", Value: w, Operator: &cav1.Operator{Reason: "stolen key"}}); err != nil {
		t.Fatal(err)
	}
	st := load(t, dir)
	if len(st.Revocations) != 1 {
		t.Fatalf("revocations %+v, want the one of %s", st.Revocations, w)
	}
	r := st.Revocations[0]
	active := st.Active()
	for i, sn := range want {
		if !slices.Contains(r.Serials, sn) {
			t.Errorf("certificate %d (serial %s) is not in the revocation's serials %v", i+1, sn, r.Serials)
		}
		j := slices.IndexFunc(r.Leaves, func(l trust.LeafInfo) bool { return l.Serial == sn })
		if j >= 0 && r.Leaves[j].Issuer != active.ID {
			t.Errorf("certificate %d: issuer %q recorded, want the authority that signed it, %s", i+1, r.Leaves[j].Issuer, active.ID)
		}
	}
	rl, err := x509.ParseRevocationList(active.CRL)
	if err != nil {
		t.Fatal(err)
	}
	var onCRL []string
	for _, e := range rl.RevokedCertificateEntries {
		onCRL = append(onCRL, e.SerialNumber.Text(16))
	}
	for i, sn := range want {
		if !slices.Contains(onCRL, sn) {
			t.Errorf("certificate %d (serial %s) is not on the CRL of authority %s: %v", i+1, sn, active.ID, onCRL)
		}
	}
}
