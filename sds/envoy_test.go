package sds

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/protoany"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

const testTrustDomain = "spiffe://test.local/"

// envoyRig is a real Envoy whose certificate and trust bundle come from
// an SDS Server, the way a sidecar's do: its mTLS listener (Inbound)
// checks a client's certificate, and its plain listener (Outbound)
// forwards to Upstream over mTLS, checking the upstream's certificate.
type envoyRig struct {
	SDS      *Server
	Envoy    *envoy.Process
	Admin    string
	Inbound  string // host:port, mTLS, answers 200 "inbound"
	Outbound string // host:port, plain HTTP, forwarded to the upstream
	// UpstreamCert is what the upstream presents; swap it between
	// requests (the upstream closes every connection after one answer).
	UpstreamCert atomic.Pointer[tls.Certificate]
	// UpstreamTickets lets the upstream issue TLS session tickets, so that
	// Envoy may resume a session instead of checking the certificate
	// again. Off, every connection is a full handshake.
	UpstreamTickets atomic.Bool
	// Resumed says whether the upstream's last answer went over a resumed
	// TLS session.
	Resumed atomic.Bool
}

// freePorts returns n ports free on 127.0.0.1 a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// startEnvoyRig starts the SDS server (already holding what configure
// puts in it), the upstream and Envoy, without waiting for Envoy to be
// ready: a test may want Envoy's first requests to wait.
func startEnvoyRig(t *testing.T, configure func(*Server)) *envoyRig {
	t.Helper()
	bin := envoytest.Bin(t)
	// A Unix socket path is short; t.TempDir's may not be.
	dir, err := os.MkdirTemp("", "sds-envoy")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s, err := New(Config{CertName: contract.SecretCertificate, RootsName: contract.SecretRoots, Logger: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	configure(s)
	sock := filepath.Join(dir, "sds.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { _ = s.Serve(ctx, l); close(served) }()
	t.Cleanup(func() { cancel(); <-served })

	r := &envoyRig{SDS: s}
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.Resumed.Store(req.TLS != nil && req.TLS.DidResume)
		io.WriteString(w, "upstream")
	}),
		TLSConfig: &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := r.UpstreamCert.Load()
			if c == nil {
				return nil, errors.New("no upstream certificate set")
			}
			return &tls.Config{Certificates: []tls.Certificate{*c}, SessionTicketsDisabled: !r.UpstreamTickets.Load()}, nil
		}}}
	srv.SetKeepAlivesEnabled(false)
	go func() { _ = srv.ServeTLS(up, "", "") }()
	t.Cleanup(func() { srv.Close() })

	ports := freePorts(t, 3)
	r.Admin = fmt.Sprintf("127.0.0.1:%d", ports[0])
	r.Inbound = fmt.Sprintf("127.0.0.1:%d", ports[1])
	r.Outbound = fmt.Sprintf("127.0.0.1:%d", ports[2])
	b := rigBootstrap(sock, ports, up.Addr().(*net.TCPAddr).Port)
	js, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(cfgPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	lw := &logWriter{t: t}
	t.Cleanup(lw.stop)
	p, err := envoy.Start(envoy.Config{Bin: bin, ConfigPath: cfgPath, AdminAddress: r.Admin,
		LogLevel: "warning", Stderr: lw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	r.Envoy = p
	return r
}

func (r *envoyRig) waitReady(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Envoy.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// rigBootstrap: the SDS cluster on the socket; the inbound mTLS listener
// and the outbound plain one with its upstream cluster, both with the
// mesh's own TLS context (contract.CommonTLS), accepting any SPIFFE ID of
// the test trust domain.
func rigBootstrap(sock string, ports []int, upstreamPort int) *bootstrapv3.Bootstrap {
	sans := []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: testTrustDomain}}}
	addr := func(port int) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}
	}
	endpoints := func(name string, a *corev3.Address) *endpointv3.ClusterLoadAssignment {
		return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: a}}}}}}}
	}
	hcm := func(name string, action *routev3.Route) *listenerv3.Filter {
		return &listenerv3.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{
			TypedConfig: protoany.Must(&hcmv3.HttpConnectionManager{
				StatPrefix: name,
				RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
					VirtualHosts: []*routev3.VirtualHost{{Name: name, Domains: []string{"*"}, Routes: []*routev3.Route{action}}}}},
				HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router",
					ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: protoany.Must(&routerv3.Router{})}}},
			})}}
	}
	prefix := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	h2 := map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protoany.Must(&httpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}})}
	return &bootstrapv3.Bootstrap{
		Node:  &corev3.Node{Id: "test/envoy", Cluster: "test"},
		Admin: &bootstrapv3.Admin{Address: addr(ports[0])},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{
				{Name: contract.SDSCluster, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
					ConnectTimeout: durationpb.New(time.Second), TypedExtensionProtocolOptions: h2,
					LoadAssignment: endpoints(contract.SDSCluster, &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: sock}}})},
				{Name: "upstream", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
					ConnectTimeout: durationpb.New(time.Second), LoadAssignment: endpoints("upstream", addr(upstreamPort)),
					TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{
						TypedConfig: protoany.Must(&tlsv3.UpstreamTlsContext{CommonTlsContext: contract.CommonTLS(sans, nil)})}}},
			},
			Listeners: []*listenerv3.Listener{
				{Name: "inbound", Address: addr(ports[1]), FilterChains: []*listenerv3.FilterChain{{
					Filters: []*listenerv3.Filter{hcm("inbound", &routev3.Route{Match: prefix, Action: &routev3.Route_DirectResponse{
						DirectResponse: &routev3.DirectResponseAction{Status: 200, Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "inbound"}}}}})},
					TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{
						TypedConfig: protoany.Must(&tlsv3.DownstreamTlsContext{CommonTlsContext: contract.CommonTLS(sans, nil),
							RequireClientCertificate: wrapperspb.Bool(true)})}},
				}}},
				{Name: "outbound", Address: addr(ports[2]), FilterChains: []*listenerv3.FilterChain{{
					Filters: []*listenerv3.Filter{hcm("outbound", &routev3.Route{Match: prefix, Action: &routev3.Route_Route{
						Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "upstream"}}}})},
				}}},
			},
		},
	}
}

// inbound calls the inbound listener presenting cert: "ok", or why not.
func (r *envoyRig) inbound(cert tls.Certificate) string {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
		// What is tested is Envoy's check of this client, not this
		// client's check of Envoy.
		InsecureSkipVerify: true, //nolint:gosec
		Certificates:       []tls.Certificate{cert},
	}}}
	resp, err := c.Get("https://" + r.Inbound + "/")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "inbound" {
		return fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
	return "ok"
}

// outbound has the upstream present cert and calls it through Envoy:
// "ok", or Envoy's answer.
func (r *envoyRig) outbound(cert tls.Certificate) string {
	r.UpstreamCert.Store(&cert)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + r.Outbound + "/")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "upstream" {
		return fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
	return "ok"
}

// rootsSecret returns the trust bundle secret Envoy has loaded, from
// its admin /config_dump, with the version it was loaded at.
func (r *envoyRig) rootsSecret(t *testing.T) (version string, vc *tlsv3.CertificateValidationContext) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := r.Envoy.Admin(ctx, "/config_dump?resource=dynamic_active_secrets")
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Configs []struct {
			Name        string          `json:"name"`
			VersionInfo string          `json:"version_info"`
			Secret      json.RawMessage `json:"secret"`
		} `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatalf("config_dump: %v\n%s", err, body)
	}
	for _, c := range dump.Configs {
		if c.Name != contract.SecretRoots {
			continue
		}
		var s tlsv3.Secret
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(c.Secret, &s); err != nil {
			t.Fatalf("config_dump: secret %s: %v\n%s", c.Name, err, c.Secret)
		}
		return c.VersionInfo, s.GetValidationContext()
	}
	t.Fatalf("config_dump: no active secret %s:\n%s", contract.SecretRoots, body)
	return "", nil
}

// waitAcked waits until the server reports Envoy holds bundle seq.
func waitAcked(t *testing.T, s *Server, seq uint64) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		ch := s.BundleAcked()
		if got := s.AckedBundle(); got == seq {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("AckedBundle = %d after 20s, want %d", s.AckedBundle(), seq)
		}
	}
}

// versionSeq returns the numeric part of an SDS version this server made.
func versionSeq(v string) int {
	for i := range v {
		if v[i] == '.' {
			n, _ := strconv.Atoi(v[:i])
			return n
		}
	}
	return -1
}

// logWriter sends Envoy's output to the test's log while it runs.
type logWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log("envoy: " + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *logWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
