package server

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/bulwarkmesh/bulwark/model"
)

// fuzzPeers are the identities a fuzzed stream may have proved: frontend
// and api of the mesh, a service account with no workload, the control
// plane's own identity and another trust domain's frontend.
var fuzzPeers = []spiffeid.ID{
	spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/frontend"),
	spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/api"),
	spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/nobody"),
	spiffeid.RequireFromString("spiffe://cluster.local/ns/bulwark-system/sa/bulwark"),
	spiffeid.RequireFromString("spiffe://evil.example/ns/demo/sa/frontend"),
}

type peerKey struct{}

// FuzzADSRequests drives the ADS callbacks the way a proxy's stream does,
// with what a proxy controls: the node ID, the type URL, the resource
// names, the version, the nonce and a NACK's message, on a first request
// and a second one after a response. Nothing panics, a stream is admitted
// exactly when its node ID names a workload of the identity its peer
// proved, a stream never changes its node, and a closed stream leaves
// nothing behind.
func FuzzADSRequests(f *testing.F) {
	giant := strings.Repeat("x", 10000)
	for _, s := range []struct {
		peer                       uint8
		node1, node2, typeURL      string
		names, version, nonce, nak string
	}{
		{0, "demo/frontend-1", "demo/frontend-1", resourcev3.ClusterType, "", "", "", ""},
		{0, "demo/frontend-1", "demo/frontend-1", resourcev3.ListenerType, "", "v1", "n1", ""},
		{0, "demo/frontend-1", "demo/frontend-1", resourcev3.EndpointType, "outbound|8080|api.demo", "v1", "n1", "rejected: bad cluster"},
		{0, "demo/frontend-1", "demo/api-1", resourcev3.RouteType, "outbound|8080|api.demo\x00inbound|8080", "", "n1", ""},
		{1, "demo/frontend-1", "demo/frontend-1", resourcev3.ClusterType, "", "", "", ""}, // api claiming frontend
		{1, "demo/api-1", "demo/api-1", resourcev3.SecretType, "default\x00ROOTCA", "", "n1", "\x1b[31mNACKED\x1b[0m\r\nforged line"},
		{2, "demo/nobody-1", "", "", "", "", "", ""},
		{3, "bulwark-system/bulwark", "", resourcev3.ClusterType, "", "", "", ""},
		{4, "demo/frontend-1", "demo/frontend-1", resourcev3.ClusterType, "", "", "", ""},
		{0, "sidecar~10.0.0.1~frontend-1.demo~demo.svc.cluster.local", "", resourcev3.ClusterType, "", "", "", ""},
		{0, "demo/frontend-1/../api-1", "", "", "", "", "", ""},
		{0, "DEMO/frontend-1", "", "", "", "", "", ""},
		{0, "demo/frontend-1\n", "", "", "", "", "", ""},
		{0, giant, giant, "type.googleapis.com/" + giant, giant, giant, giant, giant},
		{0, "demo/frontend-1", "demo/frontend-1", "type.googleapis.com/envoy.config.cluster.v3.Cluster\x00", strings.Repeat("a\x00", 5000), "", "n1", giant},
	} {
		f.Add(s.peer, s.node1, s.node2, s.typeURL, s.names, s.version, s.nonce, s.nak)
	}
	store := model.NewStore()
	if _, err := store.ReplaceState(&model.State{
		Mesh: model.Mesh{Name: "t", TrustDomain: "cluster.local"},
		Services: []*model.Service{{Namespace: "demo", Name: "api",
			Ports: []model.ServicePort{{Name: "http", Port: 8080, TargetPort: 8080, Protocol: model.ProtocolHTTP}}}},
		Workloads: []*model.Workload{
			{Namespace: "demo", Name: "frontend-1", ServiceAccount: "frontend", Address: "10.0.0.1", LocalAddress: "127.0.0.1",
				Upstreams: []model.Upstream{{Service: "api", Namespace: "demo", Port: 8080, LocalPort: 18080}}},
			{Namespace: "demo", Name: "api-1", ServiceAccount: "api", Address: "10.0.0.2", LocalAddress: "127.0.0.1", Services: []string{"api"}},
		},
	}); err != nil {
		f.Fatal(err)
	}
	s, err := New(Config{Store: store, Logger: slog.New(slog.DiscardHandler),
		Identify: func(ctx context.Context) (spiffeid.ID, error) { return ctx.Value(peerKey{}).(spiffeid.ID), nil },
		Now:      func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }})
	if err != nil {
		f.Fatal(err)
	}
	c := &callbacks{s}
	served := map[string]bool{resourcev3.ClusterType: true, resourcev3.EndpointType: true, resourcev3.ListenerType: true,
		resourcev3.RouteType: true, resourcev3.SecretType: true}
	var ids atomic.Int64
	snap := store.Snapshot()
	f.Fuzz(func(t *testing.T, peerIdx uint8, node1, node2, typeURL, names, version, nonce, nak string) {
		peer := fuzzPeers[int(peerIdx)%len(fuzzPeers)]
		id := ids.Add(1)
		ctx := context.WithValue(context.Background(), peerKey{}, peer)
		if err := c.OnStreamOpen(ctx, id, ""); err != nil {
			t.Fatalf("a stream with a verified peer was refused: %v", err)
		}
		request := func(node string) *discoveryv3.DiscoveryRequest {
			req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce}
			if names != "" {
				req.ResourceNames = strings.Split(names, "\x00")
			}
			if nak != "" {
				req.ErrorDetail = &statuspb.Status{Code: 3, Message: nak}
			}
			return req
		}

		// Only what survives the wire: protobuf refuses strings that are
		// not UTF-8.
		if _, err := proto.Marshal(request(node1 + node2)); err != nil {
			c.OnStreamClosed(id, nil)
			return
		}

		// The first request admits the stream, or refuses it.
		err := c.OnStreamRequest(id, request(node1))
		ns, name, ok := model.ParseNodeID(node1)
		var w *model.Workload
		if ok {
			w = snap.Workload(ns, name)
		}
		admit := w != nil && w.Identity("cluster.local") == peer
		if admit != (err == nil) {
			t.Fatalf("peer %s, node %q: admitted %v (%v), want %v", peer, node1, err == nil, err, admit)
		}
		if err == nil {
			ps := s.Proxies()
			if len(ps) != 1 || ps[0].Node != node1 || ps[0].Identity != peer.String() {
				t.Fatalf("after admitting %q for %s the proxies are %+v", node1, peer, ps)
			}
			// A response (the cache answers only the types a sidecar is
			// sent), then a second request: an ACK, a NACK, a stale
			// nonce, or another node on the same stream.
			if served[typeURL] {
				c.OnStreamResponse(ctx, id, request(node1), &discoveryv3.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: "v1", Nonce: "n1"})
			}
			err2 := c.OnStreamRequest(id, request(node2))
			if node2 != node1 && err2 == nil {
				t.Fatalf("the stream of %q went on as %q", node1, node2)
			}
			if ps := s.Proxies(); len(ps) != 1 || ps[0].Node != node1 {
				t.Fatalf("after the second request the proxies are %+v", ps)
			}
		} else if len(s.Proxies()) != 0 {
			t.Fatalf("a refused stream is a proxy: %+v", s.Proxies())
		}

		c.OnStreamClosed(id, nil)
		if ps := s.Proxies(); len(ps) != 0 {
			t.Fatalf("a closed stream left %+v", ps)
		}
	})
}
