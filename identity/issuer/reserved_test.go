package issuer_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/model"
)

// fakeReviewer vouches for one pod, as TokenReview would.
type fakeReviewer struct{ id issuer.ServiceAccountIdentity }

func (f fakeReviewer) Review(context.Context, string) (issuer.ServiceAccountIdentity, error) {
	return f.id, nil
}

// withWorkload adds a workload to the test mesh (as a source would,
// without the mesh file's validation: a Kubernetes pod).
func (e *env) withWorkload(t *testing.T, ns, name, sa string) {
	t.Helper()
	st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local"}}
	for _, w := range []struct{ ns, name, sa string }{{"demo", "frontend-1", "frontend"}, {"demo", "api-1", "api"}, {ns, name, sa}} {
		st.Workloads = append(st.Workloads, &model.Workload{Namespace: w.ns, Name: w.name, ServiceAccount: w.sa, Address: "10.0.0.1", LocalAddress: "127.0.0.1"})
	}
	if _, err := e.store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
}

// TestControlPlaneIdentityIsNeverIssued: whatever proves a workload, a
// workload whose identity is the control plane's gets no certificate.
func TestControlPlaneIdentityIsNeverIssued(t *testing.T) {
	t.Run("pod of the control plane's service account, with its ServiceAccount token", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		e := setup(t, func(c *issuer.Config) {
			c.Registerer = reg
			c.ServiceAccounts = fakeReviewer{issuer.ServiceAccountIdentity{Namespace: "bulwark-system", ServiceAccount: "bulwark", Pod: "cp-1"}}
		})
		e.withWorkload(t, "bulwark-system", "cp-1", "bulwark")
		err := e.rawSign(t, &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: "bulwark-system/cp-1"}, "ServiceAccountToken tok")
		wantRefused(t, err, codes.PermissionDenied, "is the control plane's own identity")
		if n := counter(t, reg, "bulwark_issuer_reserved_identity_refusals_total"); n != 1 {
			t.Errorf("refusals counted = %v, want 1", n)
		}
	})
	t.Run("workload of the control plane's service account, with a join token", func(t *testing.T) {
		e := setup(t)
		e.withWorkload(t, "bulwark-system", "impostor-1", "bulwark")
		_, err := e.sign(t, request{token: e.token(t, "bulwark-system/impostor-1"), workload: "bulwark-system/impostor-1"})
		wantRefused(t, err, codes.PermissionDenied, "spiffe://cluster.local/ns/bulwark-system/sa/bulwark, which is the control plane's own identity")
	})
	t.Run("the identity the control plane was configured with", func(t *testing.T) {
		e := setup(t, func(c *issuer.Config) { c.Reserved = []spiffeid.ID{spiffeid.RequireFromString(apiID)} })
		_, err := e.sign(t, request{token: e.token(t, "demo/api-1"), workload: "demo/api-1"})
		wantRefused(t, err, codes.PermissionDenied, apiID+", which is the control plane's own identity")
		// Others are issued as before.
		if _, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"}); err != nil {
			t.Errorf("frontend-1: %v", status.Convert(err).Message())
		}
	})
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}
