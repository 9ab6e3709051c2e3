package model

import (
	"slices"
	"testing"
)

func state(addrs ...string) *State {
	st := &State{
		Mesh:     Mesh{Name: "m", TrustDomain: "example.org"},
		Services: []*Service{{Namespace: "ns", Name: "api", Ports: []ServicePort{{Port: 80, TargetPort: 8080, Protocol: ProtocolHTTP}}}},
	}
	for _, a := range addrs {
		st.Workloads = append(st.Workloads, &Workload{Namespace: "ns", Name: "w-" + a, Address: a, Services: []string{"api"}})
		st.Endpoints = append(st.Endpoints, &Endpoint{Namespace: "ns", Service: "api", Address: a, Ready: true, Ports: []EndpointPort{{Port: 8080}}})
	}
	return st
}

func TestReplaceStateReportsOnlyWhatChanged(t *testing.T) {
	s := NewStore()
	before := s.Snapshot()
	watch := before.Watch()
	changed, err := s.ReplaceState(state("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{TableMesh, TableServices, TableWorkloads, TableEndpoints}; !slices.Equal(changed, want) {
		t.Errorf("first load changed %v, want %v", changed, want)
	}
	select {
	case <-watch[TableServices]:
	default:
		t.Error("services watch did not fire")
	}
	if before.Mesh().TrustDomain != DefaultTrustDomain {
		t.Error("an old snapshot saw a later write")
	}

	// The same state again, as new objects: nothing changes, no watch fires.
	snap := s.Snapshot()
	watch = snap.Watch()
	changed, err = s.ReplaceState(state("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 0 {
		t.Errorf("an identical state changed %v", changed)
	}
	for table, ch := range watch {
		select {
		case <-ch:
			t.Errorf("watch on %s fired for an identical state", table)
		default:
		}
	}

	// A second endpoint: workloads and endpoints change, services do not.
	changed, _ = s.ReplaceState(state("10.0.0.1", "10.0.0.2"))
	if want := []string{TableWorkloads, TableEndpoints}; !slices.Equal(changed, want) {
		t.Errorf("adding an endpoint changed %v, want %v", changed, want)
	}
	snap = s.Snapshot()
	if eps := snap.Endpoints("ns", "api"); len(eps) != 2 || eps[0].Address != "10.0.0.1" {
		t.Errorf("endpoints = %v", eps)
	}

	// Removal deletes.
	changed, _ = s.ReplaceState(state())
	if want := []string{TableWorkloads, TableEndpoints}; !slices.Equal(changed, want) {
		t.Errorf("removing both changed %v, want %v", changed, want)
	}
	if n := len(s.Snapshot().AllEndpoints()); n != 0 {
		t.Errorf("%d endpoints left", n)
	}
}

func TestParseNodeID(t *testing.T) {
	for _, tc := range []struct {
		id     string
		ns, wl string
		ok     bool
	}{
		{"demo/api-1", "demo", "api-1", true},
		{"demo", "", "", false},
		{"demo/", "", "", false},
		{"Demo/api", "", "", false},
		{"demo/api/x", "", "", false},
		{"sidecar~10.0.0.1~api.demo~demo.svc.cluster.local", "", "", false},
	} {
		ns, wl, ok := ParseNodeID(tc.id)
		if ns != tc.ns || wl != tc.wl || ok != tc.ok {
			t.Errorf("ParseNodeID(%q) = %q, %q, %v; want %q, %q, %v", tc.id, ns, wl, ok, tc.ns, tc.wl, tc.ok)
		}
	}
}
