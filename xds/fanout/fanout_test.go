package fanout_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/proto"

	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
)

const node = "demo/frontend-1"

func cla(name string, addrs ...string) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, a := range addrs {
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: a, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}}})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}}
}

func cluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
}

// config prepares a configuration of two parts, as the server does: a
// shared one with the given load assignments and one of the node's own.
func config(t *testing.T, p *fanout.Preparer, shared ...*endpointv3.ClusterLoadAssignment) fanout.Config {
	t.Helper()
	var clusters []*clusterv3.Cluster
	for _, c := range shared {
		clusters = append(clusters, cluster(c.GetClusterName()))
	}
	own := &xds.Part{Resources: xds.Resources{Clusters: []*clusterv3.Cluster{cluster("inbound|8080")}}}
	cfg, err := p.Prepare([]*xds.Part{own, {Resources: xds.Resources{Clusters: clusters, Endpoints: shared}}})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// watcher is one ADS stream's view: its subscriptions and what it got.
type watcher struct {
	t    *testing.T
	node *corev3.Node // one per stream, as the ADS server attaches it
	c    *fanout.Cache
	out  chan cachev3.Response
	subs map[string]*streamv3.Subscription
}

func newWatcher(t *testing.T, c *fanout.Cache) *watcher {
	return &watcher{t: t, c: c, node: &corev3.Node{Id: node}, out: make(chan cachev3.Response, 8), subs: map[string]*streamv3.Subscription{}}
}

// request opens a watch as go-control-plane's ADS server does.
func (w *watcher) request(typeURL, version string, names ...string) func() {
	w.t.Helper()
	sub, ok := w.subs[typeURL]
	if !ok {
		s := streamv3.NewSotwSubscription(names, true)
		sub = &s
		w.subs[typeURL] = sub
	} else {
		sub.SetResourceSubscription(names)
	}
	req := &discoveryv3.DiscoveryRequest{Node: w.node, TypeUrl: typeURL, VersionInfo: version, ResourceNames: names}
	cancel, err := w.c.CreateWatch(req, sub, w.out)
	if err != nil {
		w.t.Fatal(err)
	}
	return cancel
}

// recv returns the next response, recording what the stream was sent.
func (w *watcher) recv() *discoveryv3.DiscoveryResponse {
	w.t.Helper()
	select {
	case r := <-w.out:
		w.subs[r.GetRequest().GetTypeUrl()].SetReturnedResources(r.GetReturnedResources())
		d, err := r.GetDiscoveryResponse()
		if err != nil {
			w.t.Fatal(err)
		}
		return d
	case <-time.After(2 * time.Second):
		w.t.Fatal("no response")
		return nil
	}
}

func (w *watcher) none() {
	w.t.Helper()
	select {
	case r := <-w.out:
		d, _ := r.GetDiscoveryResponse()
		w.t.Fatalf("unexpected %s response with %d resources", d.GetTypeUrl(), len(d.GetResources()))
	default:
	}
}

func names(t *testing.T, r *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, xds.ResourceName(m))
	}
	return out
}

func TestEndpointChangeSendsOnlyTheChangedLoadAssignment(t *testing.T) {
	c := fanout.NewCache()
	c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1"), cla("b", "10.0.0.2")))
	w := newWatcher(t, c)
	w.request(resourcev3.ClusterType, "")
	cds := w.recv()
	if got := names(t, cds); !slices.Equal(got, []string{"inbound|8080", "a", "b"}) {
		t.Fatalf("clusters = %v", got)
	}
	w.request(resourcev3.EndpointType, "", "a", "b")
	eds := w.recv()
	if got := names(t, eds); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first load assignments = %v, want a and b", got)
	}
	// ACKs: the watches wait.
	w.request(resourcev3.ClusterType, cds.GetVersionInfo())
	w.request(resourcev3.EndpointType, eds.GetVersionInfo(), "a", "b")
	w.none()

	changed := c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1"), cla("b", "10.0.0.3")))
	if !changed[fanout.Endpoints] || changed[fanout.Clusters] {
		t.Fatalf("changed kinds = %v, want endpoints only", changed)
	}
	eds2 := w.recv()
	if got := names(t, eds2); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after a change to b, sent %v, want only b", got)
	}
	if eds2.GetVersionInfo() == eds.GetVersionInfo() {
		t.Error("the endpoints version did not change")
	}
	w.none() // no clusters: they did not change

	// A reconnecting stream knows nothing: it gets everything it asks for.
	w2 := newWatcher(t, c)
	w2.request(resourcev3.EndpointType, eds.GetVersionInfo(), "a", "b")
	if got := names(t, w2.recv()); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("new stream got %v, want a and b", got)
	}
}

func TestRequestForNamesNotYetThereWaits(t *testing.T) {
	c := fanout.NewCache()
	c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1")))
	w := newWatcher(t, c)
	w.request(resourcev3.EndpointType, "", "a", "b")
	w.none()
	c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1"), cla("b", "10.0.0.2")))
	if got := names(t, w.recv()); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("got %v, want a and b", got)
	}
}

func TestUnchangedConfigurationIsNotResent(t *testing.T) {
	c := fanout.NewCache()
	c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1")))
	w := newWatcher(t, c)
	w.request(resourcev3.ClusterType, "")
	cds := w.recv()
	w.request(resourcev3.ClusterType, cds.GetVersionInfo())
	// Translated again from scratch, the same content has the same version.
	if changed := c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1"))); changed != [4]bool{} {
		t.Errorf("changed = %v for the same content", changed)
	}
	w.none()
}

func TestWatchOfAReconnectedProxySurvivesClearNode(t *testing.T) {
	c := fanout.NewCache()
	w := newWatcher(t, c)
	w.request(resourcev3.ClusterType, "")
	c.ClearNode(node) // the proxy's previous stream closed after this one opened
	c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1")))
	if got := names(t, w.recv()); len(got) != 2 {
		t.Errorf("got %v", got)
	}
	if _, ok := c.Node(node); !ok {
		t.Error("node has no configuration")
	}
	cancel := w.request(resourcev3.ClusterType, "x")
	w.recv()
	cancel()
	c.ClearNode(node)
	if _, ok := c.Node(node); ok {
		t.Error("node still has a configuration after ClearNode")
	}
}

// The codec's output must be the message proto.Marshal would produce.
func TestCodecWritesTheSameMessage(t *testing.T) {
	c := fanout.NewCache()
	c.SetNode(node, config(t, fanout.NewPreparer(), cla("a", "10.0.0.1"), cla("b", "10.0.0.2")))
	w := newWatcher(t, c)
	w.request(resourcev3.EndpointType, "", "a", "b")
	r := w.recv()
	r.Nonce = "7"
	r.ControlPlane = &corev3.ControlPlane{Identifier: "bulwark"}
	want := proto.Clone(r)
	codec := fanout.Codec()
	out, err := codec.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 {
		t.Errorf("encoded in %d buffers, want a header and the shared buffer of the load assignments' group (2)", len(out))
	}
	var got discoveryv3.DiscoveryResponse
	if err := proto.Unmarshal(out.Materialize(), &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, want) {
		t.Errorf("decoded %v, want %v", &got, want)
	}
	// Written once: marshaling the same response again falls back to a
	// plain marshal, with the same result.
	again, err := codec.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != 1 {
		t.Errorf("a response was written from its prepared encoding twice (%d buffers)", len(again))
	}
	var got2 discoveryv3.DiscoveryResponse
	if err := proto.Unmarshal(again.Materialize(), &got2); err != nil || !proto.Equal(&got2, want) {
		t.Errorf("fallback decoded %v (%v), want %v", &got2, err, want)
	}
	// A response whose resources were changed after it was built is
	// marshaled as it now is.
	w2 := newWatcher(t, c)
	w2.request(resourcev3.EndpointType, "", "a", "b")
	r2 := w2.recv()
	r2.Resources = r2.Resources[:1]
	out2, err := codec.Marshal(r2)
	if err != nil {
		t.Fatal(err)
	}
	var got3 discoveryv3.DiscoveryResponse
	if err := proto.Unmarshal(out2.Materialize(), &got3); err != nil || len(got3.GetResources()) != 1 {
		t.Errorf("changed response decoded with %d resources (%v), want 1", len(got3.GetResources()), err)
	}
}

// Many streams watching while configurations change under them: run
// with -race. Every stream must end up with the last configuration.
func TestConcurrentStreamsAndChanges(t *testing.T) {
	c := fanout.NewCache()
	const streams, changes = 20, 30
	cfgs := make([]fanout.Config, changes)
	for i := range cfgs {
		cfgs[i] = config(t, fanout.NewPreparer(), cla("a", "10.0.0.1"), cla("b", fmt.Sprintf("10.0.1.%d", i)))
	}
	c.SetNode(node, cfgs[0])
	final := cfgs[changes-1][fanout.Endpoints].Version
	var wg sync.WaitGroup
	for s := 0; s < streams; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd := &corev3.Node{Id: node}
			sub := streamv3.NewSotwSubscription([]string{"a", "b"}, true)
			out := make(chan cachev3.Response, 8)
			version := ""
			deadline := time.After(10 * time.Second)
			for version != final {
				req := &discoveryv3.DiscoveryRequest{Node: nd, TypeUrl: resourcev3.EndpointType, VersionInfo: version, ResourceNames: []string{"a", "b"}}
				cancel, err := c.CreateWatch(req, &sub, out)
				if err != nil {
					t.Error(err)
					return
				}
				select {
				case r := <-out:
					sub.SetReturnedResources(r.GetReturnedResources())
					d, err := r.GetDiscoveryResponse()
					if err != nil {
						t.Error(err)
						return
					}
					version = d.GetVersionInfo()
				case <-deadline:
					t.Errorf("stuck at version %s", version)
					cancel()
					return
				}
				cancel()
			}
		}()
	}
	for i := 1; i < changes; i++ {
		c.SetNode(node, cfgs[i])
	}
	wg.Wait()
}

// What a stream is sent, through any sequence of changes and of
// subscriptions (to all the node has, to some, to more), must be what
// the state-of-the-world protocol calls for: once every name it
// subscribes to exists, the subscribed resources it does not have at
// their current content, and nothing when there are none. A resource it
// unsubscribed from is one it no longer has: subscribing again gets it
// again. Checked for a stream the server bound (whose requests the cache
// matched against the node's sets, which lets it skip comparing resource
// by resource) and one it did not.
func TestStreamsGetWhatTheProtocolCallsFor(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pool := []string{"a", "b", "c", "d", "e", "f"}
	c := fanout.NewCache()
	current := map[string]string{} // name: address, as the node has it now
	// Two parts, as the server prepares them: the node's own and a
	// shared one, so sets of several groups (some kept across a change)
	// are exercised.
	change := func() {
		var own, shared []*endpointv3.ClusterLoadAssignment
		clear(current)
		for _, n := range pool {
			if rng.IntN(4) == 0 {
				continue // absent this time
			}
			addr := fmt.Sprintf("10.0.0.%d", rng.IntN(2))
			current[n] = addr
			if n < "c" {
				own = append(own, cla(n, addr))
			} else {
				shared = append(shared, cla(n, addr))
			}
		}
		cfg, err := fanout.NewPreparer().Prepare([]*xds.Part{{Resources: xds.Resources{Endpoints: own}}, {Resources: xds.Resources{Endpoints: shared}}})
		if err != nil {
			t.Fatal(err)
		}
		c.SetNode(node, cfg)
	}
	nd := &corev3.Node{Id: node}
	type stream struct {
		id      int64 // bound to this stream ID; 0: not bound
		sub     *streamv3.Subscription
		names   []string
		out     chan cachev3.Response
		version string
		cancel  func()
		have    map[string]string // what the protocol says it has
	}
	streams := []*stream{{id: 7}, {}}
	for _, s := range streams {
		s.out, s.have = make(chan cachev3.Response, 8), map[string]string{}
	}
	request := func(s *stream, names []string) {
		if s.cancel != nil {
			s.cancel()
		}
		if s.sub == nil {
			sub := streamv3.NewSotwSubscription(names, false)
			s.sub = &sub
		} else {
			s.sub.SetResourceSubscription(names)
		}
		s.names = names
		maps.DeleteFunc(s.have, func(n, _ string) bool { return !slices.Contains(names, n) })
		req := &discoveryv3.DiscoveryRequest{Node: nd, TypeUrl: resourcev3.EndpointType, VersionInfo: s.version, ResourceNames: slices.Clone(names)}
		if s.id != 0 {
			c.Bind(req, s.id)
		}
		cancel, err := c.CreateWatch(req, s.sub, s.out)
		if err != nil {
			t.Fatal(err)
		}
		s.cancel = cancel
	}
	// got returns the response waiting on s as sorted name=address.
	got := func(s *stream) []string {
		select {
		case r := <-s.out:
			d, err := r.GetDiscoveryResponse()
			if err != nil {
				t.Fatal(err)
			}
			s.version = d.GetVersionInfo()
			var out []string
			for _, a := range d.GetResources() {
				m, err := a.UnmarshalNew()
				if err != nil {
					t.Fatal(err)
				}
				l := m.(*endpointv3.ClusterLoadAssignment)
				out = append(out, l.GetClusterName()+"="+l.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
			slices.Sort(out)
			return out
		default:
			return nil
		}
	}
	// want is what the protocol calls for, and what s has after it.
	want := func(s *stream) []string {
		var out []string
		for _, n := range s.names {
			if _, ok := current[n]; !ok {
				return nil // wait for the rest of the change
			}
		}
		for _, n := range s.names {
			if s.have[n] != current[n] {
				out = append(out, n+"="+current[n])
				s.have[n] = current[n]
			}
		}
		slices.Sort(out)
		return out
	}
	names := func() []string {
		all := slices.Sorted(maps.Keys(current))
		switch rng.IntN(4) {
		case 0: // some of them
			return slices.DeleteFunc(all, func(string) bool { return rng.IntN(2) == 0 })
		case 1: // one more than there is
			return append(all, "z")
		default: // all of them, as Envoy asks for the load assignments of its clusters
			return all
		}
	}
	check := func(step, i int, s *stream) bool {
		g, w := got(s), want(s)
		if !slices.Equal(g, w) {
			t.Fatalf("step %d, stream %d (bound: %v), subscribed to %v: sent %v, want %v", step, i, s.id != 0, s.names, g, w)
		}
		return len(g) > 0
	}
	change()
	for step := range 2000 {
		changed := rng.IntN(3) == 0
		if changed {
			change()
		}
		for i, s := range streams {
			if !changed {
				request(s, names())
			}
			// A response is ACKed, as a proxy does: the stream watches
			// again, and the ACK itself calls for nothing new.
			for check(step, i, s) {
				request(s, s.names)
			}
		}
	}
}
