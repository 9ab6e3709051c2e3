package issuer_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
)

// svidFor is a certificate of id, as an agent holds after its first
// issuance.
func (e *env) svidFor(t *testing.T, id string) *x509svid.SVID {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := e.ca.SignSVID(key.Public(), spiffeid.RequireFromString(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: chain, PrivateKey: key}
}

// burst renews n times in a row on one connection with svid, as a
// workload's stolen key in a loop would, and returns how many were
// issued and the refusals.
func (e *env) burst(t *testing.T, svid *x509svid.SVID, workload string, n int) (issued int, refused []error) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(spiffetls.ClientConfig(svid, e.cp, cpID))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := cav1.NewCertificateServiceClient(conn)
	for range n {
		_, err := client.SignCertificate(context.Background(), &cav1.SignCertificateRequest{Csr: csr, Workload: workload})
		switch status.Code(err) {
		case codes.OK:
			issued++
		case codes.ResourceExhausted:
			refused = append(refused, err)
		default:
			t.Fatalf("request %d: %v", issued+len(refused)+1, err)
		}
	}
	return issued, refused
}

// retryHint is the RetryInfo a refusal carries.
func retryHint(t *testing.T, err error) time.Duration {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	t.Fatalf("refusal %v carries no RetryInfo", err)
	return 0
}

func limitedCount(t *testing.T, reg *prometheus.Registry, scope string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "bulwark_issuer_rate_limited_total" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == scope {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no bulwark_issuer_rate_limited_total{scope=%q}", scope)
	return 0
}

// TestOneIdentitysBurstIsCutAtTheDefaultLimit: the finding as reported,
// one workload's key asking for 2,000 certificates at once, with the
// defaults. The clock stands still, so exactly the burst is issued.
func TestOneIdentitysBurstIsCutAtTheDefaultLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := setup(t, func(c *issuer.Config) { c.Registerer = reg })
	issued, refused := e.burst(t, e.svidFor(t, apiID), "demo/api-1", 2000)
	if issued != issuer.DefaultBurstPerIdentity || len(refused) != 2000-issuer.DefaultBurstPerIdentity {
		t.Fatalf("issued %d and refused %d of 2,000; want %d issued, the rest refused", issued, len(refused), issuer.DefaultBurstPerIdentity)
	}
	msg := status.Convert(refused[0]).Message()
	wantRefused(t, refused[0], codes.ResourceExhausted, apiID+" has been issued certificates at its limit")
	if hint := retryHint(t, refused[0]); hint <= 0 || hint > time.Second {
		t.Errorf("retry hint %s, want the time to the next token (1/%d s); message %q", hint, issuer.DefaultRatePerIdentity, msg)
	}
	if got := limitedCount(t, reg, "identity"); got != float64(len(refused)) {
		t.Errorf("bulwark_issuer_rate_limited_total{scope=identity} = %v, want %d", got, len(refused))
	}

	// Another identity is unaffected, and the refused one gets its next
	// certificate once the bucket has a token again.
	if issued, refused := e.burst(t, e.svidFor(t, frontendID), "demo/frontend-1", 3); issued != 3 {
		t.Errorf("frontend after api's burst: %d issued, refused %v", issued, refused)
	}
	e.clock.Add(time.Second / issuer.DefaultRatePerIdentity)
	if issued, _ := e.burst(t, e.svidFor(t, apiID), "demo/api-1", 2); issued != 1 {
		t.Errorf("api after one refill interval: %d issued, want 1", issued)
	}
}

func TestTheGlobalLimitHoldsAcrossIdentities(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := setup(t, func(c *issuer.Config) {
		c.Registerer = reg
		c.RateLimit = issuer.RateLimit{PerIdentity: 100, PerIdentityBurst: 100, Global: 1, GlobalBurst: 6}
	})
	api, frontend := e.svidFor(t, apiID), e.svidFor(t, frontendID)
	if issued, _ := e.burst(t, api, "demo/api-1", 4); issued != 4 {
		t.Fatalf("api: %d issued, want 4", issued)
	}
	issued, refused := e.burst(t, frontend, "demo/frontend-1", 3)
	if issued != 2 || len(refused) != 1 {
		t.Fatalf("frontend: %d issued, %d refused; want 2 and 1 (6 in all)", issued, len(refused))
	}
	wantRefused(t, refused[0], codes.ResourceExhausted, "the control plane is issuing certificates at its limit")
	if hint := retryHint(t, refused[0]); hint < 900*time.Millisecond || hint > 1100*time.Millisecond {
		t.Errorf("retry hint %s, want about 1s", hint)
	}

	// While the global bucket is empty a join token is not even looked
	// at, so it is not used up: it works once the bucket refills.
	tok := e.token(t, "demo/frontend-1")
	_, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"})
	wantRefused(t, err, codes.ResourceExhausted, "at its limit")
	e.clock.Add(time.Second)
	if _, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"}); err != nil {
		t.Fatalf("the join token after the refill: %v", err)
	}
	if got := limitedCount(t, reg, "global"); got != 2 {
		t.Errorf("bulwark_issuer_rate_limited_total{scope=global} = %v, want 2", got)
	}
}

// TestASpentJoinTokenIsNeverRefused: a request that redeemed a join
// token is charged but not refused (the token cannot be used again),
// and the debt delays the identity's next renewal instead.
func TestASpentJoinTokenIsNeverRefused(t *testing.T) {
	e := setup(t, func(c *issuer.Config) {
		c.RateLimit = issuer.RateLimit{PerIdentity: 1, PerIdentityBurst: 2, Global: 1000, GlobalBurst: 1000}
	})
	svid := e.svidFor(t, frontendID)
	if issued, _ := e.burst(t, svid, "demo/frontend-1", 2); issued != 2 {
		t.Fatalf("%d issued, want the burst of 2", issued)
	}
	if _, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"}); err != nil {
		t.Fatalf("join token with the identity's bucket empty: %v", err)
	}
	_, refused := e.burst(t, svid, "demo/frontend-1", 1)
	if len(refused) != 1 {
		t.Fatal("renewal right after was issued")
	}
	if hint := retryHint(t, refused[0]); hint < 1900*time.Millisecond {
		t.Errorf("retry hint %s, want about 2s: the join token's certificate was charged", hint)
	}
}

func TestNoRateLimit(t *testing.T) {
	e := setup(t, func(c *issuer.Config) { c.RateLimit = issuer.NoRateLimit })
	if issued, refused := e.burst(t, e.svidFor(t, apiID), "demo/api-1", issuer.DefaultBurst+1); len(refused) != 0 {
		t.Errorf("issued %d, refused %d with the limits off", issued, len(refused))
	}
}
