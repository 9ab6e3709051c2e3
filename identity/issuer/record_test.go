package issuer

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

// TestRecordsOfDeletedWorkloadsDoNotAccumulate: with pods coming and going
// and nobody reading the records, they stay bounded by the live mesh.
func TestRecordsOfDeletedWorkloadsDoNotAccumulate(t *testing.T) {
	store := model.NewStore()
	// Only the bookkeeping is under test: no CA, no gRPC.
	s := &Server{cfg: Config{Store: store, Now: time.Now}}
	for i := range 1000 {
		name := fmt.Sprintf("web-%d", i)
		// Only the current pod is in the mesh.
		st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local"}, Workloads: []*model.Workload{
			{Namespace: "demo", Name: name, ServiceAccount: "web", Address: "10.0.0.1", LocalAddress: "127.0.0.1"}}}
		if _, err := store.ReplaceState(st); err != nil {
			t.Fatal(err)
		}
		leaf := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), NotAfter: time.Now().Add(time.Hour)}
		s.history.add(store, Issued{Workload: "demo/" + name, Expires: leaf.NotAfter}, leaf, time.Now())
		if n := len(s.history.by); n > 65 {
			t.Fatalf("after %d pods, %d records kept for a mesh of one workload", i+1, n)
		}
	}
	if got := s.Certificates(); len(got) != 1 || got[0].Workload != "demo/web-999" {
		t.Errorf("certificates = %+v, want only demo/web-999", got)
	}
}
