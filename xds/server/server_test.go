package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// testMesh: frontend calls api; api has one workload.
func testMesh(apiAddrs ...string) *model.State {
	st := &model.State{
		Mesh: model.Mesh{Name: "t", TrustDomain: "cluster.local"},
		Services: []*model.Service{
			{Namespace: "demo", Name: "api", Ports: []model.ServicePort{{Name: "http", Port: 8080, TargetPort: 8080, Protocol: model.ProtocolHTTP}}},
			{Namespace: "demo", Name: "frontend", Ports: []model.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: model.ProtocolHTTP}}},
		},
		Workloads: []*model.Workload{{
			Namespace: "demo", Name: "frontend-1", ServiceAccount: "frontend", Address: "10.0.0.1",
			LocalAddress: "127.0.0.1", Services: []string{"frontend"},
			Upstreams: []model.Upstream{{Service: "api", Namespace: "demo", Port: 8080, LocalPort: 18080}},
		}},
	}
	for i, a := range apiAddrs {
		name := "api-" + string(rune('1'+i))
		st.Workloads = append(st.Workloads, &model.Workload{Namespace: "demo", Name: name, ServiceAccount: "api",
			Address: a, LocalAddress: "127.0.0.1", Services: []string{"api"}})
		st.Endpoints = append(st.Endpoints, &model.Endpoint{Namespace: "demo", Service: "api", Address: a, Ready: true,
			Workload: name, Ports: []model.EndpointPort{{Name: "http", Port: 8080}}})
	}
	return st
}

// pki is a CA for the tests and the control plane's certificate.
type pki struct {
	ca   *ca.CA
	cp   *ca.Source
	cpID spiffeid.ID
}

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td}})
	if err != nil {
		t.Fatal(err)
	}
	cpID := contract.ControlPlaneID(spiffeid.RequireTrustDomainFromString("cluster.local"))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	src, err := c.NewSource(ctx, cpID, time.Hour, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	return &pki{ca: c, cp: src, cpID: cpID}
}

// svid issues a certificate for a service account of namespace demo.
func (p *pki) svid(t *testing.T, sa string) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/" + sa)
	chain, err := p.ca.SignSVID(key.Public(), id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

type harness struct {
	t     *testing.T
	pki   *pki
	store *model.Store
	srv   *server.Server
	reg   *prometheus.Registry
	addr  string
	stop  func()
}

// startServer serves ADS over mutual TLS, as the control plane does.
func startServer(t *testing.T, store *model.Store, opts ...func(*server.Config)) *harness {
	t.Helper()
	p := newPKI(t)
	reg := prometheus.NewRegistry()
	cfg := server.Config{Store: store, Logger: testlog.New(t), Registerer: reg, Debounce: 10 * time.Millisecond,
		MaxDelay: 50 * time.Millisecond, Identify: spiffetls.PeerID}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := grpc.NewServer(append(server.ServerOptions(), grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(p.cp, p.cp, td))))...)
	srv.Register(ctx, g)
	done := make(chan struct{}, 2)
	go func() { _ = g.Serve(lis); done <- struct{}{} }()
	go func() { _ = srv.Run(ctx); done <- struct{}{} }()
	h := &harness{t: t, pki: p, store: store, srv: srv, reg: reg, addr: lis.Addr().String()}
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			g.Stop()
			<-done
			<-done
		})
	}
	t.Cleanup(h.stop)
	return h
}

// dial opens an ADS stream as nodeID with a certificate for the service
// account of that workload (frontend-1 -> frontend, api-N -> api).
func (h *harness) dial(t *testing.T, nodeID string) *adstest.Client {
	t.Helper()
	sa := "frontend"
	if strings.Contains(nodeID, "api") {
		sa = "api"
	}
	return h.dialAs(t, nodeID, h.pki.svid(t, sa))
}

// dialAs opens an ADS stream as nodeID presenting svid (nil: none).
func (h *harness) dialAs(t *testing.T, nodeID string, svid *x509svid.SVID) *adstest.Client {
	t.Helper()
	var tc *tls.Config
	if svid != nil {
		tc = spiffetls.ClientConfig(svid, h.pki.cp, h.pki.cpID)
	} else {
		tc = spiffetls.ClientConfig(nil, h.pki.cp, h.pki.cpID)
	}
	return adstest.Dial(t, h.addr, nodeID, tc)
}

const apiCluster = "outbound|8080|api.demo"

// syncAll walks a client through Envoy's ADS order (CDS, EDS, LDS, RDS),
// ACKing each, and returns the responses by type.
func syncAll(t *testing.T, c *adstest.Client) map[string]*discoveryv3.DiscoveryResponse {
	t.Helper()
	out := map[string]*discoveryv3.DiscoveryResponse{}
	c.Subscribe(resourcev3.ClusterType)
	cds := c.Recv(resourcev3.ClusterType, 5*time.Second)
	c.ACK(cds)
	eds := adstest.EDSClusters(t, cds)
	c.Subscribe(resourcev3.EndpointType, eds...)
	e := c.Recv(resourcev3.EndpointType, 5*time.Second)
	c.ACK(e, eds...)
	c.Subscribe(resourcev3.ListenerType)
	l := c.Recv(resourcev3.ListenerType, 5*time.Second)
	c.ACK(l)
	c.Subscribe(resourcev3.RouteType, "inbound|8080", apiCluster)
	r := c.Recv(resourcev3.RouteType, 5*time.Second)
	c.ACK(r, "inbound|8080", apiCluster)
	out["cds"], out["eds"], out["lds"], out["rds"] = cds, e, l, r
	return out
}

func newStore(t *testing.T, st *model.State) *model.Store {
	t.Helper()
	s := model.NewStore()
	if _, err := s.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestACKedConfigurationIsNotResent(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	got := syncAll(t, c)
	if want := []string{"inbound|8080", apiCluster}; !slices.Equal(adstest.Names(got["cds"]), want) {
		t.Errorf("clusters = %v, want %v", adstest.Names(got["cds"]), want)
	}
	c.Quiet(500 * time.Millisecond)
	testwait.Until(t, "one cds ACK counted", 5*time.Second, func() bool {
		return metric(t, h.reg, "bulwark_xds_acks_total", "cds") == 1
	})
}

func TestEndpointChangeSendsOnlyEndpoints(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	syncAll(t, c)
	if _, err := h.store.ReplaceState(testMesh("10.0.0.2", "10.0.0.3")); err != nil {
		t.Fatal(err)
	}
	e := c.Recv(resourcev3.EndpointType, 5*time.Second)
	var cla endpointv3.ClusterLoadAssignment
	if err := e.GetResources()[0].UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	if n := len(cla.GetEndpoints()[0].GetLbEndpoints()); n != 2 {
		t.Errorf("api has %d endpoints, want 2", n)
	}
	c.ACK(e, apiCluster)
	c.Quiet(500 * time.Millisecond) // no CDS, LDS or RDS: their content did not change
}

// TestEndpointChangeIsNotHeldForTheFullDebounce: an endpoint-only
// change is published after EndpointDebounce; any other change still
// waits for the model to be quiet for Debounce.
func TestEndpointChangeIsNotHeldForTheFullDebounce(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2", "10.0.0.3")), func(c *server.Config) {
		c.Debounce, c.MaxDelay, c.EndpointDebounce = 3*time.Second, 6*time.Second, 20*time.Millisecond
	})
	c := h.dial(t, "demo/frontend-1")
	syncAll(t, c)

	st := testMesh("10.0.0.2", "10.0.0.3")
	st.Endpoints[1].Ready = false
	if _, err := h.store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	e := c.Recv(resourcev3.EndpointType, 2*time.Second) // well inside Debounce
	if got := adstest.Addresses(t, e)[apiCluster]; !slices.Equal(got, []string{"10.0.0.2"}) {
		t.Errorf("api's endpoints = %v, want [10.0.0.2]", got)
	}
	c.ACK(e, apiCluster)

	// A service change is coalesced for the whole Debounce.
	st = testMesh("10.0.0.2", "10.0.0.3")
	st.Endpoints[1].Ready = false
	st.Services[0].Ports[0].Protocol = model.ProtocolTCP
	if _, err := h.store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	c.Quiet(time.Second)
	c.Recv(resourcev3.ListenerType, 5*time.Second) // api's port is TCP now
}

func TestNACKIsNotResentUntilTheConfigurationChanges(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	c.Subscribe(resourcev3.ClusterType)
	cds := c.Recv(resourcev3.ClusterType, 5*time.Second)
	c.NACK(cds, "")
	// go-control-plane on its own answers a NACK with the same version at
	// once, and Envoy NACKs it again: a hot loop. Bulwark holds it back.
	c.Quiet(500 * time.Millisecond)
	testwait.Until(t, "the NACK in the proxy's status", 5*time.Second, func() bool {
		ps := h.srv.Proxies()
		return len(ps) == 1 && ps[0].Types["cds"].NackError == "test: rejected on purpose" && ps[0].Types["cds"].NackedVersion == cds.GetVersionInfo()
	})
	if n := metric(t, h.reg, "bulwark_xds_nacks_total", "cds"); n != 1 {
		t.Errorf("NACKs counted = %v, want 1", n)
	}

	// A change to the clusters is sent: it may fix what was rejected.
	st := testMesh("10.0.0.2")
	st.Services = append(st.Services, &model.Service{Namespace: "demo", Name: "db",
		Ports: []model.ServicePort{{Port: 5432, TargetPort: 5432, Protocol: model.ProtocolTCP}}})
	st.Workloads[0].Upstreams = append(st.Workloads[0].Upstreams, model.Upstream{Service: "db", Namespace: "demo", Port: 5432, LocalPort: 5432})
	if _, err := h.store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	next := c.Recv(resourcev3.ClusterType, 5*time.Second)
	if next.GetVersionInfo() == cds.GetVersionInfo() {
		t.Fatalf("resent the rejected version %s", cds.GetVersionInfo())
	}
	if want := []string{"inbound|8080", "outbound|5432|db.demo", apiCluster}; !slices.Equal(adstest.Names(next), want) {
		t.Errorf("clusters = %v, want %v", adstest.Names(next), want)
	}
	c.ACK(next)
	c.Quiet(300 * time.Millisecond)
	testwait.Until(t, "the NACK cleared by the ACK of the new version", 5*time.Second, func() bool {
		return h.srv.Proxies()[0].Types["cds"].NackError == ""
	})
}

func TestStaleNonceIsIgnored(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	c.Subscribe(resourcev3.ClusterType)
	first := c.Recv(resourcev3.ClusterType, 5*time.Second)
	c.ACK(first)
	st := testMesh("10.0.0.2")
	st.Workloads[0].Upstreams = nil
	if _, err := h.store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	second := c.Recv(resourcev3.ClusterType, 5*time.Second)
	if slices.Equal(adstest.Names(first), adstest.Names(second)) {
		t.Fatalf("test setup: cluster lists should differ: %v", adstest.Names(second))
	}
	// A NACK carrying the first nonce is stale (that response was already
	// ACKed and superseded): the server must neither count nor answer it.
	c.NACK(first, first.GetVersionInfo())
	c.Quiet(300 * time.Millisecond)
	c.ACK(second)
	testwait.Until(t, "the ACK of the second version", 5*time.Second, func() bool {
		return h.srv.Proxies()[0].Types["cds"].AckedVersion == second.GetVersionInfo()
	})
	// A stream's requests are handled in order: the stale NACK was too.
	if n := metric(t, h.reg, "bulwark_xds_nacks_total", "cds"); n != 0 {
		t.Errorf("stale NACK was counted: %v", n)
	}
}

func TestReconnectToAFreshControlPlane(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	before := syncAll(t, c)
	c.Close()
	h.stop()

	// A new control plane knows nothing of this proxy. The proxy comes
	// back with the versions it holds; it must still get its resources.
	h2 := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c2 := h2.dial(t, "demo/frontend-1")
	c2.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: before["cds"].GetVersionInfo()})
	cds := c2.Recv(resourcev3.ClusterType, 5*time.Second)
	if !slices.Equal(adstest.Names(cds), adstest.Names(before["cds"])) {
		t.Errorf("clusters after reconnect = %v, want %v", adstest.Names(cds), adstest.Names(before["cds"]))
	}
	if cds.GetVersionInfo() != before["cds"].GetVersionInfo() {
		t.Errorf("same model, different version: %s vs %s (versions should be content hashes)", cds.GetVersionInfo(), before["cds"].GetVersionInfo())
	}
	c2.ACK(cds)

	// The same after a change made while the proxy was away: it gets the
	// new endpoints on its first EDS request.
	h2.stop()
	h3 := startServer(t, newStore(t, testMesh("10.0.0.2", "10.0.0.3")))
	c3 := h3.dial(t, "demo/frontend-1")
	c3.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: before["eds"].GetVersionInfo(), ResourceNames: []string{apiCluster}})
	eds := c3.Recv(resourcev3.EndpointType, 5*time.Second)
	var cla endpointv3.ClusterLoadAssignment
	if err := eds.GetResources()[0].UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	if n := len(cla.GetEndpoints()[0].GetLbEndpoints()); n != 2 {
		t.Errorf("after reconnect api has %d endpoints, want the 2 the new model has", n)
	}
}

func TestResourceRequestedBeforeItExists(t *testing.T) {
	st := testMesh("10.0.0.2")
	st.Workloads[0].Upstreams = nil
	h := startServer(t, newStore(t, st))
	c := h.dial(t, "demo/frontend-1")
	c.Subscribe(resourcev3.EndpointType, apiCluster)
	// The server may answer at once with what it has, which is nothing.
	select {
	case r := <-c.Resps:
		if len(r.GetResources()) != 0 {
			t.Fatalf("got %v before the service exists", adstest.Names(r))
		}
		c.ACK(r, apiCluster)
	case <-time.After(300 * time.Millisecond):
	}

	if _, err := h.store.ReplaceState(testMesh("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	e := c.Recv(resourcev3.EndpointType, 5*time.Second)
	if want := []string{apiCluster}; !slices.Equal(adstest.Names(e), want) {
		t.Errorf("endpoints = %v, want %v", adstest.Names(e), want)
	}
}

// TestProxyBeforeSyncIsHeldUntilSync: a proxy that connects while the
// sources are still syncing (a control plane restart) is neither refused
// nor sent a partial configuration: it waits, and gets its configuration
// as soon as the sources have synced.
func TestProxyBeforeSyncIsHeldUntilSync(t *testing.T) {
	store := model.NewStore()
	synced := make(chan struct{})
	h := startServer(t, store, func(c *server.Config) { c.Synced = synced })
	c := h.dial(t, "demo/frontend-1")
	c.Subscribe(resourcev3.ClusterType)
	select {
	case r := <-c.Resps:
		t.Fatalf("sent %v before the sources synced", adstest.Names(r))
	case err := <-c.Errs:
		t.Fatalf("stream ended before the sources synced: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := store.ReplaceState(testMesh("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	close(synced)
	cds := c.Recv(resourcev3.ClusterType, 5*time.Second)
	if !slices.Contains(adstest.Names(cds), apiCluster) {
		t.Errorf("clusters after sync = %v, want %s among them", adstest.Names(cds), apiCluster)
	}
}

// TestProxyIsAskedToRetryWhenSyncTakesLong: past SyncWait the proxy is
// told to come back (Unavailable, which Envoy retries), not refused.
func TestProxyIsAskedToRetryWhenSyncTakesLong(t *testing.T) {
	h := startServer(t, model.NewStore(), func(c *server.Config) {
		c.Synced, c.SyncWait = make(chan struct{}), 200*time.Millisecond
	})
	c := h.dial(t, "demo/frontend-1")
	c.Subscribe(resourcev3.ClusterType)
	c.Refused(codes.Unavailable, "still syncing its sources; retry")
	if n := metric(t, h.reg, "bulwark_xds_rejected_streams_total", "not_synced"); n != 1 {
		t.Errorf("streams asked to retry = %v, want 1", n)
	}
}

func TestBadNodeIDIsRefused(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "sidecar~10.0.0.1~frontend")
	c.Subscribe(resourcev3.ClusterType)
	c.Refused(codes.InvalidArgument, "namespace>/<workload")
}

func TestUnknownWorkloadIsRefused(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/nobody")
	c.Subscribe(resourcev3.ClusterType)
	c.Refused(codes.PermissionDenied, "not this workload")
	if n := metric(t, h.reg, "bulwark_xds_rejected_streams_total", "unknown_workload"); n != 1 {
		t.Errorf("rejections counted = %v, want 1", n)
	}
}

// TestSpoofedNodeIDGetsNothing: a proxy with a valid certificate for api
// that claims frontend's node ID gets none of frontend's resources.
func TestSpoofedNodeIDGetsNothing(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dialAs(t, "demo/frontend-1", h.pki.svid(t, "api"))
	c.Subscribe(resourcev3.ClusterType)
	c.Refused(codes.PermissionDenied, "your certificate is spiffe://cluster.local/ns/demo/sa/api")
	if n := metric(t, h.reg, "bulwark_xds_rejected_streams_total", "identity_mismatch"); n != 1 {
		t.Errorf("spoofing attempts counted = %v, want 1", n)
	}
	if ps := h.srv.Proxies(); len(ps) != 0 {
		t.Errorf("the spoofing proxy was recorded: %+v", ps)
	}
	// The real frontend is not disturbed.
	real := h.dial(t, "demo/frontend-1")
	if got := syncAll(t, real); len(got["cds"].GetResources()) != 2 {
		t.Errorf("frontend got %v", adstest.Names(got["cds"]))
	}
}

func TestNoClientCertificateIsRefused(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dialAs(t, "demo/frontend-1", nil)
	c.Subscribe(resourcev3.ClusterType)
	c.Refused(codes.Unauthenticated, "client certificate")
}

func TestCertificateOfAnotherCAIsRefused(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	stranger := newPKI(t).svid(t, "frontend") // same trust domain name, another CA
	c := h.dialAs(t, "demo/frontend-1", stranger)
	c.Subscribe(resourcev3.ClusterType)
	select {
	case err := <-c.Errs:
		if status.Code(err) != codes.Unavailable {
			t.Errorf("stream ended with %v, want the handshake to fail (Unavailable)", err)
		}
	case r := <-c.Resps:
		t.Fatalf("a certificate of another CA got %v", adstest.Names(r))
	case <-time.After(5 * time.Second):
		t.Fatal("not refused")
	}
}

func TestDisconnectForgetsTheProxy(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	syncAll(t, c)
	if n := len(h.srv.Proxies()); n != 1 {
		t.Fatalf("%d proxies recorded, want 1", n)
	}
	c.Close()
	testwait.Until(t, "the proxy forgotten after it disconnected", 5*time.Second, func() bool {
		return len(h.srv.Proxies()) == 0
	})
}

// TestReconnectGetsItsConfigurationAgain: a proxy that leaves is
// forgotten, cache included; when it comes back to the same server it
// is a new connection and is sent its configuration again.
func TestReconnectGetsItsConfigurationAgain(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	c := h.dial(t, "demo/frontend-1")
	before := syncAll(t, c)
	c.Close()
	testwait.Until(t, "the proxy forgotten after it disconnected", 5*time.Second, func() bool {
		return len(h.srv.Proxies()) == 0
	})
	c2 := h.dial(t, "demo/frontend-1")
	after := syncAll(t, c2)
	for _, typ := range []string{"cds", "eds", "lds", "rds"} {
		if !slices.Equal(adstest.Names(after[typ]), adstest.Names(before[typ])) {
			t.Errorf("%s after reconnect = %v, want %v", typ, adstest.Names(after[typ]), adstest.Names(before[typ]))
		}
	}
	if ps := h.srv.Proxies(); len(ps) != 1 || ps[0].Streams != 1 {
		t.Errorf("proxies after reconnect = %+v, want demo/frontend-1 with one stream", ps)
	}
}

// TestProxiesDoNotWriteTheModel: data flows one way. Proxies coming and
// going are the server's own business; the model it reads does not
// change.
func TestProxiesDoNotWriteTheModel(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	watch := h.store.Snapshot().Watch()
	c := h.dial(t, "demo/frontend-1")
	syncAll(t, c)
	c.Close()
	testwait.Until(t, "the proxy forgotten after it disconnected", 5*time.Second, func() bool {
		return len(h.srv.Proxies()) == 0
	})
	for table, ch := range watch {
		select {
		case <-ch:
			t.Errorf("table %s changed while a proxy came and went", table)
		default:
		}
	}
}

// metric returns the value of a counter with one label value, or 0.
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
