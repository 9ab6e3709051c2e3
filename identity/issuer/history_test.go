package issuer

import (
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

// TestIssuedHistoryBounds: every certificate still valid is kept per
// workload, at most MaxIssuedPerWorkload with the oldest dropped first;
// expired ones and workloads gone from the mesh are dropped.
func TestIssuedHistoryBounds(t *testing.T) {
	store := model.NewStore()
	mesh := func(names ...string) {
		st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local"}}
		for _, n := range names {
			st.Workloads = append(st.Workloads, &model.Workload{Namespace: "demo", Name: n, ServiceAccount: "web", Address: "10.0.0.1", LocalAddress: "127.0.0.1"})
		}
		if _, err := store.ReplaceState(st); err != nil {
			t.Fatal(err)
		}
	}
	mesh("web-1")
	now := time.Now()
	leaf := func(serial int64, life time.Duration) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial), AuthorityKeyId: []byte{1, 2}, NotAfter: now.Add(life)}
	}
	var h issuedHistory
	for i := range int64(20) {
		h.add(store, Issued{Workload: "demo/web-1"}, leaf(i+1, time.Hour), now)
	}
	got := h.get("demo/web-1", now)
	if len(got) != MaxIssuedPerWorkload || got[0].Serial != "5" || got[len(got)-1].Serial != "14" {
		t.Fatalf("after 20 certificates: %d kept, first %s last %s; want the latest %d, 5 to 14 (hex)", len(got), got[0].Serial, got[len(got)-1].Serial, MaxIssuedPerWorkload)
	}
	if string(got[0].AuthorityKeyID) != "\x01\x02" {
		t.Errorf("authority key ID %x, want the leaf's", got[0].AuthorityKeyID)
	}

	// Expired ones go.
	h.add(store, Issued{Workload: "demo/web-1", Serial: "64"}, leaf(100, 3*time.Hour), now)
	if got := h.get("demo/web-1", now.Add(2*time.Hour)); len(got) != 1 || got[0].Serial != "64" {
		t.Errorf("two hours later: %+v, want only the certificate still valid", got)
	}
	// Expired, the latest is no certificate to revoke any more, but it is
	// still what Certificates reports: a workload that stopped renewing.
	later := now.Add(4 * time.Hour)
	if got := h.get("demo/web-1", later); len(got) != 0 {
		t.Errorf("four hours later, still valid: %+v, want none", got)
	}
	if got := h.latest(store, later); len(got) != 1 || got[0].Serial != "64" {
		t.Errorf("four hours later, latest: %+v, want the expired 64", got)
	}

	// Workloads gone from the mesh go, with pod churn and nobody reading.
	for i := range 1000 {
		name := fmt.Sprintf("pod-%d", i)
		mesh(name)
		h.add(store, Issued{Workload: "demo/" + name}, leaf(int64(i), time.Hour), now)
		if n := len(h.by); n > 65 {
			t.Fatalf("after %d pods, %d workloads kept for a mesh of one", i+1, n)
		}
	}
}
