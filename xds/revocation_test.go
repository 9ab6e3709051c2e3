package xds_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
	"github.com/bulwarkmesh/bulwark/xds"
)

// TestRevocationEpochStampsOnlyMutualTLS: a revocation epoch changes
// exactly what carries mutual TLS, so that Envoy drains those
// connections and no others: every inbound filter chain that requires a
// client certificate, every cluster that originates TLS and every chain
// that proxies TCP to such a cluster carries the epoch, and nothing else
// changes at all (plaintext chains, HTTP outbound chains, default
// chains, other clusters, routes, endpoints). What a chain or cluster
// does is read off its configuration, not off its name.
func TestRevocationEpochStampsOnlyMutualTLS(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs in testdata/in: %v", err)
	}
	var stampedChains, stampedTCP, plainChains, stampedClusters, plainClusters int
	for _, in := range inputs {
		snap := loadSnapshot(t, in)
		now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
		for _, w := range snap.Workloads() {
			before, err := xds.Translate(snap, w, xds.Options{Now: now})
			if err != nil {
				t.Fatal(err)
			}
			after, err := xds.Translate(snap, w, xds.Options{Now: now, RevocationEpoch: 7})
			if err != nil {
				t.Fatal(err)
			}
			where := in + ": " + w.Key()
			if len(before.Listeners) != len(after.Listeners) || len(before.Clusters) != len(after.Clusters) {
				t.Fatalf("%s: the epoch changed which resources there are", where)
			}
			tlsClusters := map[string]bool{}
			for _, c := range after.Clusters {
				tlsClusters[c.GetName()] = originatesTLS(t, c.GetTransportSocket())
			}
			for i, l := range after.Listeners {
				l = proto.Clone(l).(*listenerv3.Listener)
				for _, fc := range l.GetFilterChains() {
					if requiresClientCert(t, fc.GetTransportSocket()) || tlsClusters[tcpProxyCluster(t, fc)] {
						stampedChains++
						if tlsClusters[tcpProxyCluster(t, fc)] {
							stampedTCP++
						}
						wantEpoch(t, where+": listener "+l.GetName()+" chain "+fc.GetName(), fc.GetMetadata(), "7")
					} else {
						plainChains++
						wantEpoch(t, where+": listener "+l.GetName()+" chain "+fc.GetName(), fc.GetMetadata(), "")
					}
					fc.Metadata = nil
				}
				if dfc := l.GetDefaultFilterChain(); dfc != nil {
					wantEpoch(t, where+": listener "+l.GetName()+" default chain", dfc.GetMetadata(), "")
				}
				if !proto.Equal(l, before.Listeners[i]) {
					t.Errorf("%s: listener %s differs beyond the epoch on its mutual TLS chains", where, l.GetName())
				}
			}
			for i, c := range after.Clusters {
				c = proto.Clone(c).(*clusterv3.Cluster)
				if originatesTLS(t, c.GetTransportSocket()) {
					stampedClusters++
					wantEpoch(t, where+": cluster "+c.GetName(), c.GetMetadata(), "7")
				} else {
					plainClusters++
					wantEpoch(t, where+": cluster "+c.GetName(), c.GetMetadata(), "")
				}
				c.Metadata = nil
				if !proto.Equal(c, before.Clusters[i]) {
					t.Errorf("%s: cluster %s differs beyond the epoch", where, c.GetName())
				}
			}
			if !sameProtos(before.Routes, after.Routes) || !sameProtos(before.Endpoints, after.Endpoints) {
				t.Errorf("%s: the epoch changed routes or endpoints", where)
			}
		}
	}
	// The inputs must exercise both sides of each rule.
	if stampedChains == 0 || stampedTCP == 0 || plainChains == 0 || stampedClusters == 0 || plainClusters == 0 {
		t.Errorf("inputs cover too little: %d stamped chains (%d outbound TCP) and %d plain ones, %d stamped and %d plain clusters",
			stampedChains, stampedTCP, plainChains, stampedClusters, plainClusters)
	}
}

// TestNextWithANewEpochEqualsAFreshTranslation: a translator carried
// over to a new epoch, with no change to the model, rebuilds what it
// shares: every proxy gets the new stamp.
func TestNextWithANewEpochEqualsAFreshTranslation(t *testing.T) {
	snap := loadSnapshot(t, "testdata/in/transparent.yaml")
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tr := xds.NewTranslator(snap, xds.Options{Now: now})
	for _, w := range snap.Workloads() {
		if _, err := tr.Parts(w); err != nil { // build and share every piece at epoch 0
			t.Fatal(err)
		}
	}
	for _, epoch := range []uint64{3, 3, 0} {
		opts := xds.Options{Now: now, RevocationEpoch: epoch}
		tr = tr.Next(snap, opts, map[string]bool{model.TableEndpoints: true})
		for _, w := range snap.Workloads() {
			got, err := tr.Translate(w)
			if err != nil {
				t.Fatal(err)
			}
			want, err := xds.Translate(snap, w, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !sameProtos(got.Listeners, want.Listeners) || !sameProtos(got.Clusters, want.Clusters) {
				t.Errorf("epoch %d, %s: the carried-over translator differs from a fresh one", epoch, w.Key())
			}
		}
	}
}

func loadSnapshot(t *testing.T, path string) *model.Snapshot {
	t.Helper()
	st, err := meshfile.Load(context.Background(), []string{path})
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	store := model.NewStore()
	if _, err := store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	return store.Snapshot()
}

// wantEpoch fails unless md carries the revocation epoch want ("" for
// none), and nothing else.
func wantEpoch(t *testing.T, what string, md *corev3.Metadata, want string) {
	t.Helper()
	if want == "" {
		if md != nil {
			t.Errorf("%s: metadata %v, want none", what, md)
		}
		return
	}
	fm := md.GetFilterMetadata()
	got := fm[xds.RevocationMetadataKey].GetFields()["epoch"].GetStringValue()
	if len(fm) != 1 || got != want || len(md.GetTypedFilterMetadata()) != 0 {
		t.Errorf("%s: metadata %v, want only %s epoch %s", what, md, xds.RevocationMetadataKey, want)
	}
}

func requiresClientCert(t *testing.T, ts *corev3.TransportSocket) bool {
	t.Helper()
	if ts == nil || !ts.GetTypedConfig().MessageIs(&tlsv3.DownstreamTlsContext{}) {
		return false
	}
	var ctx tlsv3.DownstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
		t.Fatal(err)
	}
	return ctx.GetRequireClientCertificate().GetValue()
}

// tcpProxyCluster returns the cluster a chain's TCP proxy sends to, or
// "".
func tcpProxyCluster(t *testing.T, fc *listenerv3.FilterChain) string {
	t.Helper()
	for _, f := range fc.GetFilters() {
		if !f.GetTypedConfig().MessageIs(&tcpproxyv3.TcpProxy{}) {
			continue
		}
		var p tcpproxyv3.TcpProxy
		if err := f.GetTypedConfig().UnmarshalTo(&p); err != nil {
			t.Fatal(err)
		}
		return p.GetCluster()
	}
	return ""
}

func originatesTLS(t *testing.T, ts *corev3.TransportSocket) bool {
	t.Helper()
	return ts != nil && ts.GetTypedConfig().MessageIs(&tlsv3.UpstreamTlsContext{})
}
