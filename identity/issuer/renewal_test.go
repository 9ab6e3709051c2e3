package issuer_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
)

// obtain gets a certificate for workload, with a join token when token
// is set, else renewing with current, and returns it with its key.
func (e *env) obtain(t *testing.T, workload, token string, current *x509svid.SVID) (*x509svid.SVID, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	tc := spiffetls.ClientConfig(nil, e.cp, cpID)
	if current != nil {
		tc = spiffetls.ClientConfig(current, e.cp, cpID)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "JoinToken "+token)
	}
	resp, err := cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, &cav1.SignCertificateRequest{Csr: der, Workload: workload})
	if err != nil {
		return nil, err
	}
	var raw []byte
	for _, c := range resp.GetCertChain() {
		raw = append(raw, c...)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.ParseRaw(raw, pk)
	if err != nil {
		t.Fatal(err)
	}
	return svid, nil
}

// TestRenewalIsBoundToTheWorkloadItWasIssuedTo: api-1 and api-2 share the
// identity of service account api. A certificate issued to api-2 renews
// api-2, and cannot be used to renew as api-1 (which would overwrite
// api-1's record: what proxy-status and the expiry metric say of api-1's
// certificate).
func TestRenewalIsBoundToTheWorkloadItWasIssuedTo(t *testing.T) {
	e := setup(t)
	e.withWorkload(t, "demo", "api-2", "api")
	api1, err := e.obtain(t, "demo/api-1", e.token(t, "demo/api-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	api2, err := e.obtain(t, "demo/api-2", e.token(t, "demo/api-2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	record := func(w string) string {
		for _, c := range e.iss.Certificates() {
			if c.Workload == w {
				return c.Serial
			}
		}
		return ""
	}
	before := record("demo/api-1")
	if before != api1.Certificates[0].SerialNumber.Text(16) {
		t.Fatalf("test setup: api-1's record is %s, want its certificate", before)
	}

	_, err = e.obtain(t, "demo/api-1", "", api2)
	wantRefused(t, err, codes.PermissionDenied, "issued to workload demo/api-2")
	if got := record("demo/api-1"); got != before {
		t.Errorf("api-2's certificate overwrote api-1's record: %s, was %s", got, before)
	}

	// Each renews itself, and its record follows.
	for _, c := range []struct {
		workload string
		svid     *x509svid.SVID
	}{{"demo/api-1", api1}, {"demo/api-2", api2}} {
		next, err := e.obtain(t, c.workload, "", c.svid)
		if err != nil {
			t.Fatalf("%s renewing itself: %v", c.workload, err)
		}
		if got, want := record(c.workload), next.Certificates[0].SerialNumber.Text(16); got != want {
			t.Errorf("%s's record is %s, want its renewed certificate %s", c.workload, got, want)
		}
	}
}
