// Package adstest is a minimal ADS client for tests: it speaks the
// protocol the way Envoy does (subscribe, ACK, NACK) over a real gRPC
// connection, and hands every response to the test.
package adstest

import (
	"context"
	"crypto/tls"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Client is one ADS stream.
type Client struct {
	t      testing.TB
	conn   *grpc.ClientConn
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	// Resps receives every response; Errs the error that ended the stream.
	Resps  chan *discoveryv3.DiscoveryResponse
	Errs   chan error
	cancel context.CancelFunc
}

// Dial opens an ADS stream to addr as nodeID over tc. A stream the server
// refuses at once reports its error on Errs.
func Dial(t testing.TB, addr, nodeID string, tc *tls.Config) *Client {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{t: t, conn: conn, node: &corev3.Node{Id: nodeID},
		Resps: make(chan *discoveryv3.DiscoveryResponse, 64), Errs: make(chan error, 1), cancel: cancel}
	t.Cleanup(c.Close)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		c.Errs <- err
		return c
	}
	c.stream = stream
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				c.Errs <- err
				return
			}
			c.Resps <- r
		}
	}()
	return c
}

// Close ends the stream.
func (c *Client) Close() {
	c.cancel()
	_ = c.conn.Close()
}

// Send sends a request as this node. A failed send means the server
// ended the stream; Errs says why.
func (c *Client) Send(req *discoveryv3.DiscoveryRequest) {
	req.Node = c.node
	if c.stream != nil {
		_ = c.stream.Send(req)
	}
}

// Subscribe asks for a type (names empty: all).
func (c *Client) Subscribe(typeURL string, names ...string) {
	c.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names})
}

// ACK acknowledges a response.
func (c *Client) ACK(r *discoveryv3.DiscoveryResponse, names ...string) {
	c.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names})
}

// NACK rejects a response; lastGood is the version the client keeps.
func (c *Client) NACK(r *discoveryv3.DiscoveryResponse, lastGood string, names ...string) {
	c.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: lastGood, ResponseNonce: r.GetNonce(),
		ResourceNames: names, ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "test: rejected on purpose"}})
}

// Recv waits up to d for the next response and checks its type.
func (c *Client) Recv(typeURL string, d time.Duration) *discoveryv3.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.Resps:
		if r.GetTypeUrl() != typeURL {
			c.t.Fatalf("got a %s response, want %s", r.GetTypeUrl(), typeURL)
		}
		return r
	case err := <-c.Errs:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
		c.t.Fatalf("no %s response within %s", typeURL, d)
	}
	return nil
}

// Names returns the names of the resources in a response, sorted.
func Names(r *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			panic(err)
		}
		switch x := m.(type) {
		case *endpointv3.ClusterLoadAssignment:
			out = append(out, x.GetClusterName())
		case interface{ GetName() string }:
			out = append(out, x.GetName())
		}
	}
	slices.Sort(out)
	return out
}

// EDSClusters returns the names of the EDS clusters in a CDS response.
func EDSClusters(t testing.TB, r *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range r.GetResources() {
		var cl clusterv3.Cluster
		if err := a.UnmarshalTo(&cl); err != nil {
			t.Fatal(err)
		}
		if cl.GetType() == clusterv3.Cluster_EDS {
			out = append(out, cl.GetName())
		}
	}
	return out
}

// Addresses returns the endpoint addresses of each load assignment in
// an EDS response.
func Addresses(t testing.TB, r *discoveryv3.DiscoveryResponse) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, a := range r.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		list := []string{}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				list = append(list, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
		slices.Sort(list)
		out[cla.GetClusterName()] = list
	}
	return out
}

// Quiet asserts that no response arrives for d.
func (c *Client) Quiet(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.Resps:
		c.t.Fatalf("unexpected %s response, version %s", r.GetTypeUrl(), r.GetVersionInfo())
	case err := <-c.Errs:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
	}
}

// Refused waits for the server to end the stream with code and a message
// containing msg, without a response before.
func (c *Client) Refused(code codes.Code, msg string) {
	c.t.Helper()
	select {
	case err := <-c.Errs:
		if status.Code(err) != code || !strings.Contains(err.Error(), msg) {
			c.t.Errorf("stream ended with %v, want %s mentioning %q", err, code, msg)
		}
	case r := <-c.Resps:
		c.t.Fatalf("got a response: %s with %v", r.GetTypeUrl(), Names(r))
	case <-time.After(5 * time.Second):
		c.t.Fatal("stream not refused within 5s")
	}
}
