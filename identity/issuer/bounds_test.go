package issuer_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
)

// maxLine is what one refusal may cost in the log, and one error on
// the wire: a few KiB, whatever the caller sent.
const maxLine = 4 << 10

// rawSign sends a request as it is, with optional authorization
// metadata, and no client certificate.
func (e *env) rawSign(t *testing.T, req *cav1.SignCertificateRequest, auth string) error {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(spiffetls.ClientConfig(nil, e.cp, cpID))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if auth != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	}
	_, err = cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, req)
	return err
}

func csrDER(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestHugeFieldsAreBoundedInLogsAndErrors: an unauthenticated caller
// cannot make the CA service write megabytes to its log, or echo them
// back, and terminal escapes it sends come out escaped.
func TestHugeFieldsAreBoundedInLogsAndErrors(t *testing.T) {
	logger, lines := testlog.Capture()
	e := setup(t, func(c *issuer.Config) { c.Logger = logger })
	const escape = "\x1b]0;pwned\x07\x1b[2J"
	huge := escape + strings.Repeat("A", 3<<20)

	for _, tc := range []struct {
		name string
		req  *cav1.SignCertificateRequest
		auth string
		code codes.Code
	}{
		{"3 MiB workload, no credential", &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: huge}, "", codes.InvalidArgument},
		{"3 MiB workload with a join token", &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: huge}, "JoinToken " + e.token(t, "demo/frontend-1"), codes.InvalidArgument},
		{"3 MiB CSR", &cav1.SignCertificateRequest{Csr: []byte(huge), Workload: "demo/frontend-1"}, "", codes.InvalidArgument},
		{"3 MiB join token", &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: "demo/frontend-1"}, "JoinToken " + strings.Repeat("t", 3<<20), codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(lines.All())
			err := e.rawSign(t, tc.req, tc.auth)
			if status.Code(err) != tc.code {
				t.Errorf("code %s, want %s: %.300s", status.Code(err), tc.code, err)
			}
			msg := status.Convert(err).Message()
			if len(msg) > maxLine || strings.ContainsAny(msg, "\x1b\x07") {
				t.Errorf("the error is %d bytes, or holds a raw escape: %.300q", len(msg), msg)
			}
			logged := lines.All()[before:]
			if len(logged) == 0 {
				t.Fatal("the refusal was not logged")
			}
			for _, l := range logged {
				if len(l) > maxLine || strings.ContainsAny(l, "\x1b\x07") {
					t.Errorf("a log line of %d bytes, or with a raw escape: %.300q", len(l), l)
				}
			}
			if strings.Contains(tc.name, "workload") && !strings.Contains(strings.Join(logged, "\n"), `bytes cut`) {
				t.Errorf("the log does not say the workload was cut: %.500q", logged)
			}
		})
	}
}
