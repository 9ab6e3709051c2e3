package server_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/xds"
)

// TestRevocationEpochIsPushedOnceToEveryProxy: a new epoch sends every
// connected proxy its clusters and listeners again, stamped; the same
// epoch again sends nothing, as does the epoch a proxy already has (0
// at the start).
func TestRevocationEpochIsPushedOnceToEveryProxy(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	first := syncAll(t, c)
	if got := clusterEpoch(t, first["cds"], apiCluster); got != "" {
		t.Fatalf("epoch %q before any was set", got)
	}
	sets := func() float64 { return gauge(t, h, "bulwark_xds_snapshots_set_total") }
	testwait.Until(t, "the first configuration set", 5*time.Second, func() bool { return sets() == 1 })

	h.srv.SetRevocationEpoch(0) // what it has
	c.Quiet(300 * time.Millisecond)

	h.srv.SetRevocationEpoch(4)
	// Clusters and listeners change; endpoints do not, but Envoy keeps a
	// changed cluster warming until it gets its load assignment again.
	got := map[string]*discoveryv3.DiscoveryResponse{}
	for range 3 {
		var r *discoveryv3.DiscoveryResponse
		select {
		case r = <-c.Resps:
		case <-time.After(5 * time.Second):
			t.Fatalf("after a new epoch got only %v", slices.Collect(maps.Keys(got)))
		}
		if got[r.GetTypeUrl()] != nil || (len(got) == 0 && r.GetTypeUrl() != resourcev3.ClusterType) {
			t.Fatalf("got %s after %v, want clusters first, then listeners and endpoints", r.GetTypeUrl(), slices.Collect(maps.Keys(got)))
		}
		got[r.GetTypeUrl()] = r
		if r.GetTypeUrl() == resourcev3.EndpointType {
			c.ACK(r, apiCluster)
		} else {
			c.ACK(r)
		}
	}
	cds, lds, eds := got[resourcev3.ClusterType], got[resourcev3.ListenerType], got[resourcev3.EndpointType]
	if cds == nil || lds == nil || eds == nil {
		t.Fatalf("after a new epoch got %v, want clusters, listeners and endpoints", slices.Collect(maps.Keys(got)))
	}
	if got := clusterEpoch(t, cds, apiCluster); got != "4" {
		t.Errorf("%s carries epoch %q, want 4", apiCluster, got)
	}
	if got := clusterEpoch(t, cds, "inbound|8080"); got != "" {
		t.Errorf("inbound|8080 (to the app, plaintext) carries epoch %q, want none", got)
	}
	if got := chainEpoch(t, lds, "inbound|8080", "mtls"); got != "4" {
		t.Errorf("the mutual TLS chain of inbound|8080 carries epoch %q, want 4", got)
	}
	if got := adstest.Names(eds); !slices.Equal(got, []string{apiCluster}) {
		t.Errorf("endpoints resent: %v, want %s's", got, apiCluster)
	}
	c.Quiet(500 * time.Millisecond) // routes did not change
	testwait.Until(t, "one more configuration set", 5*time.Second, func() bool { return sets() == 2 })

	h.srv.SetRevocationEpoch(4)
	c.Quiet(500 * time.Millisecond)
	if n := sets(); n != 2 {
		t.Errorf("configurations set = %v after the same epoch again, want 2", n)
	}

	// A later change to the model keeps the epoch.
	st := testMesh("10.0.0.2")
	st.Services[0].Ports[0].Name = "web"
	st.Endpoints[0].Ports[0].Name = "web"
	st.Workloads[0].Services = nil
	if _, err := h.store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	cds = c.Recv(resourcev3.ClusterType, 5*time.Second)
	if got := clusterEpoch(t, cds, apiCluster); got != "4" {
		t.Errorf("after a model change %s carries epoch %q, want 4", apiCluster, got)
	}
}

// TestRestartWithTheStoredEpochChangesNothing: a control plane that
// starts with the epoch the mesh already has gives a reconnecting proxy
// the very configuration it holds (same versions, so Envoy drains
// nothing); one that started at 0 and learned the epoch later would
// have drained every connection of the mesh twice.
func TestRestartWithTheStoredEpochChangesNothing(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	h.srv.SetRevocationEpoch(9)
	c := h.dial(t, "demo/frontend-1")
	before := syncAll(t, c)
	if got := clusterEpoch(t, before["cds"], apiCluster); got != "9" {
		t.Fatalf("%s carries epoch %q, want 9", apiCluster, got)
	}
	c.Close()
	h.stop()

	h2 := startServer(t, newStore(t, testMesh("10.0.0.2")))
	h2.srv.SetRevocationEpoch(9)
	c2 := h2.dial(t, "demo/frontend-1")
	after := syncAll(t, c2)
	for _, typ := range []string{"cds", "lds"} {
		if after[typ].GetVersionInfo() != before[typ].GetVersionInfo() {
			t.Errorf("%s version %s after the restart, want %s", typ, after[typ].GetVersionInfo(), before[typ].GetVersionInfo())
		}
	}
}

func clusterEpoch(t *testing.T, r *discoveryv3.DiscoveryResponse, name string) string {
	t.Helper()
	for _, a := range r.GetResources() {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		if c.GetName() == name {
			return c.GetMetadata().GetFilterMetadata()[xds.RevocationMetadataKey].GetFields()["epoch"].GetStringValue()
		}
	}
	t.Fatalf("no cluster %s in %v", name, r.GetResources())
	return ""
}

func chainEpoch(t *testing.T, r *discoveryv3.DiscoveryResponse, listener, chain string) string {
	t.Helper()
	for _, a := range r.GetResources() {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		if l.GetName() != listener {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			if fc.GetName() == chain {
				return fc.GetMetadata().GetFilterMetadata()[xds.RevocationMetadataKey].GetFields()["epoch"].GetStringValue()
			}
		}
	}
	t.Fatalf("no chain %s in listener %s", chain, listener)
	return ""
}

// gauge returns the value of an unlabelled counter or gauge, or 0.
func gauge(t *testing.T, h *harness, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}
