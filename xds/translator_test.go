package xds_test

import (
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds"
)

// scopedMesh: caller may call svc-a's workload a-1 but not b-1; svc-a
// and svc-b are backed by one of them each, as endpoints say.
func scopedMesh(aBackend, bBackend string, ready bool) *model.State {
	st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local"}}
	st.Workloads = []*model.Workload{
		{Namespace: "t", Name: "caller", ServiceAccount: "caller", Address: "10.0.0.1", LocalAddress: "127.0.0.1", Capture: model.CaptureTransparent},
		{Namespace: "t", Name: "a-1", ServiceAccount: "a", Address: "10.0.0.2", LocalAddress: "127.0.0.1", Services: []string{"svc-a"}},
		{Namespace: "t", Name: "b-1", ServiceAccount: "b", Address: "10.0.0.3", LocalAddress: "127.0.0.1", Services: []string{"svc-b"}},
	}
	port := []model.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: model.ProtocolHTTP}}
	st.Services = []*model.Service{
		{Namespace: "t", Name: "svc-a", Address: "10.96.0.1", Ports: port},
		{Namespace: "t", Name: "svc-b", Address: "10.96.0.2", Ports: port},
	}
	addr := map[string]string{"a-1": "10.0.0.2", "b-1": "10.0.0.3"}
	st.Endpoints = []*model.Endpoint{
		{Namespace: "t", Service: "svc-a", Address: addr[aBackend], Workload: aBackend, Ready: true, Ports: []model.EndpointPort{{Name: "http", Port: 8080}}},
		{Namespace: "t", Service: "svc-b", Address: addr[bBackend], Workload: bBackend, Ready: ready, Ports: []model.EndpointPort{{Name: "http", Port: 8080}}},
	}
	st.Access = []*model.AccessPolicy{{Namespace: "t", Name: "a-from-caller", Spec: model.AccessPolicySpec{
		Selector: model.AccessSelector{MatchLabels: nil, Service: "svc-a"}, Action: model.ActionAllow,
		Rules: []model.AccessRule{{From: []model.Source{{ServiceAccounts: []string{"caller"}}}}},
	}}}
	return st
}

// A translator carried over an endpoint change with Next must produce
// exactly what a fresh one does, including the services a caller is
// scoped to when endpoints move between workloads with different
// policies.
func TestNextAfterEndpointChangesEqualsAFreshTranslation(t *testing.T) {
	steps := []*model.State{
		scopedMesh("a-1", "b-1", true),
		scopedMesh("a-1", "a-1", true),  // svc-b now backed by a-1: caller may call it
		scopedMesh("b-1", "a-1", true),  // svc-a backed by b-1: caller may not
		scopedMesh("b-1", "a-1", false), // svc-b's endpoint not ready
		scopedMesh("a-1", "b-1", true),  // back
	}
	store := model.NewStore()
	if _, err := store.ReplaceState(steps[0]); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tr := xds.NewTranslator(store.Snapshot(), xds.Options{Now: now})
	for i, st := range steps {
		changed := map[string]bool{}
		if i > 0 {
			tables, err := store.ReplaceState(st)
			if err != nil {
				t.Fatal(err)
			}
			for _, tb := range tables {
				changed[tb] = true
			}
			if len(tables) != 1 || tables[0] != model.TableEndpoints {
				t.Fatalf("step %d changed %v, want endpoints only", i, tables)
			}
		}
		snap := store.Snapshot()
		// Translate everything with the carried-over translator first, so
		// it has built (and may reuse) every piece.
		if i > 0 {
			tr = tr.Next(snap, xds.Options{Now: now}, changed)
		}
		for _, w := range snap.Workloads() {
			got, err := tr.Translate(w)
			if err != nil {
				t.Fatal(err)
			}
			want, err := xds.Translate(snap, w, xds.Options{Now: now})
			if err != nil {
				t.Fatal(err)
			}
			if !sameResources(got, want) {
				t.Errorf("step %d, %s: the carried-over translator differs from a fresh one:\n got clusters %v\nwant clusters %v",
					i, w.Key(), names(got), names(want))
			}
		}
	}
}

func sameResources(a, b *xds.Resources) bool {
	return sameProtos(a.Listeners, b.Listeners) && sameProtos(a.Clusters, b.Clusters) &&
		sameProtos(a.Routes, b.Routes) && sameProtos(a.Endpoints, b.Endpoints)
}

func names(r *xds.Resources) []string {
	var out []string
	for _, c := range r.Clusters {
		out = append(out, c.GetName())
	}
	return out
}
