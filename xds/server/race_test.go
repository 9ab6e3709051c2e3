package server

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
)

// These tests hold a goroutine at a hook (see hooks) to make a race
// happen every time, where the tests of server_test.go would need luck.

const apiNode = "demo/api-1"

var apiID = spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/api")

// raceMesh is a workload api-1 behind service api, whose port speaks
// protocol, with one endpoint per address.
func raceMesh(protocol model.Protocol, addrs ...string) *model.State {
	st := &model.State{
		Mesh: model.Mesh{Name: "t", TrustDomain: "cluster.local"},
		Services: []*model.Service{{Namespace: "demo", Name: "api",
			Ports: []model.ServicePort{{Name: "p", Port: 8080, TargetPort: 8080, Protocol: protocol}}}},
		Workloads: []*model.Workload{{Namespace: "demo", Name: "api-1", ServiceAccount: "api",
			Address: "10.0.0.2", LocalAddress: "127.0.0.1", Services: []string{"api"}}},
	}
	for _, a := range addrs {
		st.Endpoints = append(st.Endpoints, &model.Endpoint{Namespace: "demo", Service: "api", Address: a, Ready: true,
			Workload: "api-1", Ports: []model.EndpointPort{{Name: "p", Port: 8080}}})
	}
	return st
}

var raceNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newRaceServer returns a server over st whose every stream proves
// api's identity, and a clock that never moves.
func newRaceServer(t *testing.T, st *model.State) *Server {
	t.Helper()
	store := model.NewStore()
	if _, err := store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Store: store, Logger: testlog.New(t), Debounce: time.Millisecond,
		EndpointDebounce: time.Millisecond, ProxyDebounce: time.Millisecond,
		Identify: func(context.Context) (spiffeid.ID, error) { return apiID, nil },
		Now:      func() time.Time { return raceNow }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// connect opens stream id as api-1 and sends its first request, as the
// ADS server does when a proxy connects.
func connect(t *testing.T, s *Server, id int64) {
	t.Helper()
	c := &callbacks{s}
	if err := c.OnStreamOpen(context.Background(), id, ""); err != nil {
		t.Fatal(err)
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: apiNode}, TypeUrl: resourcev3.ClusterType}
	if err := c.OnStreamRequest(id, req); err != nil {
		t.Fatal(err)
	}
}

// wantFresh fails unless the cache holds for api-1 what translating the
// store as it is now, from scratch, gives.
func wantFresh(t *testing.T, s *Server) {
	t.Helper()
	snap := s.cfg.Store.Snapshot()
	tr := xds.NewTranslator(snap, xds.Options{Now: raceNow, Authz: authz.NewIndex(snap, raceNow), Secrets: s.cfg.Secrets})
	parts, err := tr.Parts(snap.Workload("demo", "api-1"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := fanout.NewPreparer().Prepare(parts)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := s.cache.Node(apiNode)
	if !ok {
		t.Fatalf("the cache has no configuration for %s", apiNode)
	}
	for _, k := range fanout.Kinds {
		if g, w := got.Versions()[k], want.Versions()[k]; g != w {
			t.Errorf("%s: published version %s, want %s (the model as it is now)", typeName(k.TypeURL()), g, w)
		}
	}
}

// TestAWriteJustBeforeTheSnapshotIsNotLost: a source writes while a
// pass is between noticing that endpoints changed and taking its
// snapshot. The snapshot holds that write, a change to a service that
// rebuilds api-1's inbound side, so the pass must not publish the
// inbound side it built before; and as the next pass waits on changes
// after that snapshot, nothing would correct it later.
func TestAWriteJustBeforeTheSnapshotIsNotLost(t *testing.T) {
	s := newRaceServer(t, raceMesh(model.ProtocolHTTP, "10.0.0.2"))
	passes := make(chan *model.Snapshot, 1)
	s.hooks.published = func(snap *model.Snapshot) { passes <- snap }
	writes := make(chan func(), 1) // a write for the next pass to run
	s.hooks.beforeSnapshot = func() {
		select {
		case write := <-writes:
			write()
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	<-passes // the first pass, with no proxy yet
	connect(t, s, 1)
	<-passes
	wantFresh(t, s)

	// An endpoint of api is added; the pass that publishes it takes its
	// snapshot just after the same source turned api's port into TCP.
	writes <- func() {
		if _, err := s.cfg.Store.ReplaceState(raceMesh(model.ProtocolTCP, "10.0.0.2", "10.0.0.3")); err != nil {
			t.Error(err)
		}
	}
	if _, err := s.cfg.Store.ReplaceState(raceMesh(model.ProtocolHTTP, "10.0.0.2", "10.0.0.3")); err != nil {
		t.Fatal(err)
	}
	snap := <-passes
	if len(writes) != 0 {
		t.Fatal("test setup: the pass did not run the write")
	}
	if p := snap.Service("demo", "api").Ports[0].Protocol; p != model.ProtocolTCP {
		t.Fatalf("test setup: the pass's snapshot has api's port as %s, want the TCP just written", p)
	}
	wantFresh(t, s)
}

// TestACloseDoesNotClearTheStreamThatReplacedIt: a proxy's only stream
// closes, and the proxy is back on a new stream, with its configuration
// published, before the close has cleared the node in the cache. The
// close must leave the new stream's configuration alone: the run loop
// publishes a proxy once per connection, so nothing would set it again
// until the model changes.
func TestACloseDoesNotClearTheStreamThatReplacedIt(t *testing.T) {
	s := newRaceServer(t, raceMesh(model.ProtocolHTTP, "10.0.0.2"))
	c := &callbacks{s}
	// No Run goroutine: the test calls publish where it would.
	connect(t, s, 1)
	s.publish(false)
	wantFresh(t, s)

	back := false
	s.hooks.beforeClear = func(node string) {
		if node != apiNode {
			t.Fatalf("clearing %s, want %s", node, apiNode)
		}
		connect(t, s, 2)
		s.publish(false)
		back = true
	}
	c.OnStreamClosed(1, nil)
	if !back {
		t.Fatal("test setup: the close did not get to clearing the node")
	}
	wantFresh(t, s)
	if ps := s.Proxies(); len(ps) != 1 || ps[0].Streams != 1 {
		t.Errorf("proxies = %+v, want %s on one stream", ps, apiNode)
	}

	// When the new stream closes in its turn, nothing replaces it: the
	// node is cleared.
	s.hooks.beforeClear = nil
	c.OnStreamClosed(2, nil)
	if cfg, ok := s.cache.Node(apiNode); ok {
		t.Errorf("the cache still has %v for %s after its last stream closed", cfg.Versions(), apiNode)
	}
	if ps := s.Proxies(); len(ps) != 0 {
		t.Errorf("proxies = %+v, want none", ps)
	}
}
