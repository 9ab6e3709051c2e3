// Package sidecar simulates Envoy sidecars for load tests: each speaks
// state-of-the-world ADS over its own gRPC connection and stream,
// subscribes the way Envoy does (clusters, then the load assignments of
// its EDS clusters, then listeners, then the route configurations they
// name), and ACKs every response. It never NACKs.
package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Kinds in the order the tracker indexes them; they match xds/fanout.
const (
	Clusters = iota
	Endpoints
	Listeners
	Routes
	NumKinds
)

var typeURLs = [NumKinds]string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

func kindOf(typeURL string) int {
	for k, u := range typeURLs {
		if u == typeURL {
			return k
		}
	}
	return -1
}

// Versions is a version per kind.
type Versions [NumKinds]string

// Tracker records what every sidecar ACKed and tells when all of them
// have ACKed a set of target versions.
type Tracker struct {
	mu        sync.Mutex
	acked     []Versions
	targets   []Versions
	remaining int
	last      time.Time
	done      chan struct{}
	errs      []error
	failed    chan struct{} // closed at the first stream error
	bytes     int64
}

// NewTracker tracks n sidecars.
func NewTracker(n int) *Tracker {
	return &Tracker{acked: make([]Versions, n), failed: make(chan struct{})}
}

// Arm sets the versions to wait for (one per sidecar; an empty version
// is no expectation) and returns a channel closed once every sidecar has
// ACKed its targets. Targets a sidecar has ACKed already count as met.
func (t *Tracker) Arm(targets []Versions) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.targets = targets
	t.remaining = 0
	t.last = time.Time{}
	t.done = make(chan struct{})
	for i, tv := range targets {
		for k, v := range tv {
			if v != "" && t.acked[i][k] != v {
				t.remaining++
			}
		}
	}
	if t.remaining == 0 {
		close(t.done)
	}
	return t.done
}

// Last returns when the last target was ACKed.
func (t *Tracker) Last() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// Pending returns how many targets are not ACKed yet.
func (t *Tracker) Pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.remaining
}

// Errors returns the stream errors seen so far.
func (t *Tracker) Errors() []error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.errs)
}

// Bytes returns the response bytes received so far.
func (t *Tracker) Bytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bytes
}

func (t *Tracker) ack(i, kind int, version string, at time.Time, size int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.bytes += int64(size)
	old := t.acked[i][kind]
	t.acked[i][kind] = version
	if t.targets == nil || t.done == nil {
		return
	}
	want := t.targets[i][kind]
	if want == "" || old == want || version != want {
		return
	}
	t.remaining--
	if at.After(t.last) {
		t.last = at
	}
	if t.remaining == 0 {
		close(t.done)
	}
}

func (t *Tracker) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.errs) == 0 {
		close(t.failed)
	}
	t.errs = append(t.errs, err)
}

// Failed is closed when a sidecar's stream fails.
func (t *Tracker) Failed() <-chan struct{} { return t.failed }

// Config describes how sidecars reach the control plane.
type Config struct {
	Addr string
	// TLS, when set, is each sidecar's mTLS configuration, by index.
	TLS func(i int) *tls.Config
	// Identity, when set, is sent as IdentityHeader metadata instead: for
	// a plaintext server that takes it on trust (a bench-only setup).
	Identity func(i int) string
}

// IdentityHeader carries a sidecar's identity over plaintext.
const IdentityHeader = "bulwark-bench-identity"

// Sidecar is one simulated proxy.
type Sidecar struct {
	i      int
	node   string
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{}
}

// window is the sidecars' HTTP/2 stream and connection window. Envoy's
// default, which its gRPC client to the control plane uses unless the
// bootstrap says otherwise, is 256 MiB: a response is never held back by
// flow control. Here a thousand sidecars share one process, and a window
// that large lets them buffer every byte the server sends before they
// read it (21 GB per change at 10,000 services, more than the machine
// has). 4 MiB holds every response of a sidecar at 1,000 services, so
// there flow control never holds one back either, and bounds what the
// process can buffer to 4 MiB per sidecar.
const window = 4 << 20

// Start connects sidecar i as node and runs it until Stop.
func Start(cfg Config, t *Tracker, i int, node string) (*Sidecar, error) {
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS(i))
	}
	// Like Envoy, no cap on the size of a response: at 10,000 services
	// the clusters alone are several megabytes.
	conn, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(creds),
		grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(newCodec()), grpc.MaxCallRecvMsgSize(math.MaxInt32)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if cfg.Identity != nil {
		ctx = metadata.AppendToOutgoingContext(ctx, IdentityHeader, cfg.Identity(i))
	}
	s := &Sidecar{i: i, node: node, conn: conn, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := s.run(ctx, t); err != nil && ctx.Err() == nil {
			t.fail(fmt.Errorf("%s: %w", node, err))
		}
	}()
	return s, nil
}

// Stop ends the sidecar's stream and connection.
func (s *Sidecar) Stop() {
	s.cancel()
	<-s.done
	s.conn.Close()
}

var adsDesc = &grpc.StreamDesc{StreamName: "StreamAggregatedResources", ServerStreams: true, ClientStreams: true}

const adsMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

// typeState is what the sidecar has of one kind.
type typeState struct {
	version, nonce string
	names          []string // subscribed (EDS, RDS)
}

func (s *Sidecar) run(ctx context.Context, t *Tracker) error {
	st, err := s.conn.NewStream(ctx, adsDesc, adsMethod, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	node := &corev3.Node{Id: s.node, Cluster: "bench"}
	var state [NumKinds]typeState
	send := func(kind int) error {
		ts := state[kind]
		req := &discoveryv3.DiscoveryRequest{VersionInfo: ts.version, ResponseNonce: ts.nonce, TypeUrl: typeURLs[kind], ResourceNames: ts.names}
		if node != nil {
			req.Node, node = node, nil // the first request carries the node
		}
		return st.SendMsg(req)
	}
	if err := send(Clusters); err != nil {
		return err
	}
	var asked [NumKinds]bool
	asked[Clusters] = true
	for {
		var r response
		if err := st.RecvMsg(&r); err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		kind := kindOf(r.TypeURL)
		if kind < 0 {
			return fmt.Errorf("unexpected type %s", r.TypeURL)
		}
		state[kind].version, state[kind].nonce = r.Version, r.Nonce
		follow := -1
		names := r.Follow
		switch kind {
		case Clusters:
			follow = Endpoints
		case Listeners:
			follow = Routes
		}
		if err := send(kind); err != nil { // the ACK
			return err
		}
		t.ack(s.i, kind, r.Version, time.Now(), r.Bytes)
		if follow >= 0 {
			sort.Strings(names)
			names = slices.Compact(names)
			// A first request without names would be a wildcard one.
			if (!asked[follow] && len(names) > 0) || (asked[follow] && !slices.Equal(names, state[follow].names)) {
				asked[follow] = true
				state[follow].names = names
				if err := send(follow); err != nil {
					return err
				}
			}
		}
		if kind == Clusters && !asked[Listeners] {
			asked[Listeners] = true
			if err := send(Listeners); err != nil {
				return err
			}
		}
	}
}
