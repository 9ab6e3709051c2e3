package server

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/model"
)

func sotwOrdered() config.XDSOption { return sotwv3.WithOrderedADS() }

func sotwLogger(l gcplog.Logger) config.XDSOption { return sotwv3.WithLogger(l) }

// stream is one open ADS stream. Its fields are guarded by Server.mu.
type stream struct {
	id       int64
	ctx      context.Context
	identity string // the peer's verified SPIFFE ID
	peer     string // the peer's address
	node     string
	// admittedAt is when the stream was admitted as its node's.
	admittedAt time.Time
	// sent remembers, per type URL, the nonce and version of the last
	// response, to tell an ACK from a NACK and which version a NACK
	// rejects.
	sent map[string]sent
	// types is where this stream stands per resource type it was sent.
	// Each stream of a node keeps its own: a second stream with the same
	// node ID (an Envoy restarting, or another process holding the
	// workload's key) can neither ACK nor NACK for the first.
	types map[string]*TypeStatus
	// typeURLs are the type URLs the stream asked for, up to
	// maxTypesPerStream.
	typeURLs map[string]bool
}

type sent struct {
	nonce, version string
}

// Limits on what one node may hold in the server.
const (
	// maxStreamsPerNode bounds the streams open at once for one node ID.
	// One is the rule; an Envoy that restarts, or reconnects before the
	// server has noticed its old connection is gone, has two for a while.
	maxStreamsPerNode = 8
	// maxTypesPerStream bounds the type URLs one stream may ask for. A
	// sidecar asks for four.
	maxTypesPerStream = 16
)

// proxyState is what the server knows of one connected proxy. Guarded
// by Server.mu.
type proxyState struct {
	proxy *proxy
	// streams are the node's open streams, in the order they were
	// admitted. The last is the node's current stream: its status is the
	// node's.
	streams []*stream
}

// current returns the node's latest admitted stream.
func (p *proxyState) current() *stream { return p.streams[len(p.streams)-1] }

type callbacks struct{ s *Server }

var _ serverv3.Callbacks = (*callbacks)(nil)

func (c *callbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if typeURL != "" {
		c.s.m.rejected.WithLabelValues("not_ads").Inc()
		return status.Errorf(codes.Unimplemented, "only aggregated discovery (ADS) is served")
	}
	who, err := c.s.cfg.Identify(ctx)
	if err != nil {
		msg := bounded.Text(err.Error(), bounded.Message)
		c.s.m.rejected.WithLabelValues("unauthenticated").Inc()
		c.s.log.Warn("stream refused: no verified client certificate", "err", msg)
		return status.Errorf(codes.Unauthenticated, "ADS needs a client certificate of the trust domain: %s", msg)
	}
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.streams[id] = &stream{id: id, ctx: ctx, identity: who.String(), peer: addr, sent: map[string]sent{},
		types: map[string]*TypeStatus{}, typeURLs: map[string]bool{}}
	return nil
}

func (c *callbacks) OnStreamClosed(id int64, _ *corev3.Node) {
	s := c.s
	s.mu.Lock()
	st := s.streams[id]
	delete(s.streams, id)
	var gone string
	if st != nil && st.node != "" {
		if ps := s.proxies[st.node]; ps != nil {
			ps.streams = slices.DeleteFunc(ps.streams, func(o *stream) bool { return o == st })
			if len(ps.streams) == 0 {
				delete(s.proxies, st.node)
				gone = st.node
			}
		}
	}
	s.m.connected.Set(float64(len(s.proxies)))
	s.mu.Unlock()
	s.cache.ForgetStream(id)
	if gone == "" {
		return
	}
	s.log.Info("proxy disconnected", "node", gone)
	if s.hooks.beforeClear != nil {
		s.hooks.beforeClear(gone)
	}
	// The node's configuration goes with its last stream, unless the
	// proxy has been admitted again since, on a new stream: that stream
	// owns the configuration now, and the run loop sets it only once per
	// connection. Admission takes s.mu, so checking and clearing under
	// it leaves no gap for one.
	s.mu.Lock()
	if s.proxies[gone] == nil {
		s.cache.ClearNode(gone)
	}
	s.mu.Unlock()
	s.proxiesChanged()
}

// OnStreamRequest identifies the proxy on its first request, and tells
// ACKs from NACKs. For a NACK it rewrites the request's version to the
// rejected one, so the cache does not answer with that same version again
// and again: the proxy gets a new response only when its configuration
// changes.
func (c *callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	s := c.s
	s.mu.Lock()
	st := s.streams[id]
	if st == nil {
		s.mu.Unlock()
		return status.Error(codes.Internal, "unknown stream")
	}
	nodeID := req.GetNode().GetId()
	if st.node == "" && !s.synced() {
		// Before the sources sync, an unknown workload may just not be
		// known yet. Hold the stream until they have (only this stream's
		// goroutine waits), and past SyncWait ask the proxy to come back
		// rather than refuse it.
		s.mu.Unlock()
		if !s.waitSynced(st.ctx) {
			s.m.rejected.WithLabelValues("not_synced").Inc()
			return status.Error(codes.Unavailable, "the control plane is still syncing its sources; retry")
		}
		s.mu.Lock()
	}
	if st.node == "" {
		ns, name, ok := model.ParseNodeID(nodeID)
		if !ok {
			s.mu.Unlock()
			s.m.rejected.WithLabelValues("bad_node_id").Inc()
			s.log.Warn("stream refused: node ID is not <namespace>/<workload>", "node", quote(nodeID), "peer", st.identity)
			return status.Errorf(codes.InvalidArgument, "node ID %s is not <namespace>/<workload>", quote(nodeID))
		}
		// From here on the node ID is a valid one: short, and only
		// lower-case letters, digits, '-' and one '/'.
		// The node ID must name a workload whose identity is the one the
		// peer proved; otherwise the stream gets nothing at all.
		snap := s.cfg.Store.Snapshot()
		w := snap.Workload(ns, name)
		if w == nil || w.Identity(snap.Mesh().TrustDomain).String() != st.identity {
			s.mu.Unlock()
			reason, want := "unknown_workload", "no such workload"
			if w != nil {
				reason, want = "identity_mismatch", w.Identity(snap.Mesh().TrustDomain).String()
			}
			s.m.rejected.WithLabelValues(reason).Inc()
			s.log.Warn("stream refused: the node ID names a workload the peer is not", "node", nodeID,
				"peer", st.identity, "workload_identity", want)
			return status.Errorf(codes.PermissionDenied, "node %s: your certificate is %s, which is not this workload", nodeID, st.identity)
		}
		ps := s.proxies[nodeID]
		if ps != nil && len(ps.streams) >= maxStreamsPerNode {
			s.mu.Unlock()
			s.m.rejected.WithLabelValues("too_many_streams").Inc()
			s.log.Warn("stream refused: the node has too many streams open", "node", nodeID, "streams", maxStreamsPerNode,
				"peer", st.peer)
			return status.Errorf(codes.ResourceExhausted, "node %s already has %d ADS streams open", nodeID, maxStreamsPerNode)
		}
		st.node, st.admittedAt = nodeID, s.cfg.Now()
		isNew := ps == nil
		if isNew {
			ps = &proxyState{
				proxy: &proxy{id: nodeID, namespace: ns, workload: name, identity: st.identity, connectedAt: st.admittedAt},
			}
			s.proxies[nodeID] = ps
		} else {
			// Not an error: an Envoy that restarts, or comes back before
			// its old connection is seen to be gone, has two streams for
			// a while. But it is also what another holder of the
			// workload's key looks like, so it is said, and each stream's
			// status is kept and shown apart.
			s.log.Warn("another stream for a connected node; each is tracked on its own, the latest is the node's",
				"node", nodeID, "streams", len(ps.streams)+1, "peer", st.peer)
		}
		ps.streams = append(ps.streams, st)
		s.m.connected.Set(float64(len(s.proxies)))
		s.mu.Unlock()
		if isNew {
			s.proxiesChanged()
			s.log.Info("proxy connected", "node", nodeID)
		}
		s.mu.Lock()
	} else if nodeID != st.node {
		s.mu.Unlock()
		s.m.rejected.WithLabelValues("node_changed").Inc()
		return status.Errorf(codes.InvalidArgument, "node ID changed from %q to %s on one stream", st.node, quote(nodeID))
	}
	typeURL := req.GetTypeUrl()
	if !st.typeURLs[typeURL] {
		if len(st.typeURLs) >= maxTypesPerStream {
			s.mu.Unlock()
			s.m.rejected.WithLabelValues("too_many_types").Inc()
			return status.Errorf(codes.InvalidArgument, "stream asked for more than %d resource types; type URL %s is one too many",
				maxTypesPerStream, quote(typeURL))
		}
		st.typeURLs[typeURL] = true
	}
	// Binding the request to the stream looks up every name it
	// subscribes to; no other stream needs to wait for that. (This
	// stream's state stays: requests and the stream's end are handled
	// on one goroutine.)
	s.mu.Unlock()
	s.cache.Bind(req, id)
	s.mu.Lock()
	defer s.mu.Unlock()

	if _, known := typeNames[typeURL]; !known {
		return nil // never answered (see fanout.Cache), so nothing to track
	}
	ts := st.typeStatus(typeURL)
	now := s.cfg.Now()
	last, ok := st.sent[typeURL]
	if !ok {
		// The first request of a type on this stream. A proxy that
		// reconnects reports the version it runs; we answer it anyway, so
		// every new stream converges the same way whether or not the
		// control plane (restarted, or another replica) agrees with that
		// version, and the status shows a response and its ACK.
		if v := req.GetVersionInfo(); v != "" && req.GetResponseNonce() == "" {
			ts.AckedVersion, ts.AckedAt = bounded.Text(v, bounded.Name), now
			req.VersionInfo = ""
		}
		return nil
	}
	if req.GetResponseNonce() == "" || req.GetResponseNonce() != last.nonce {
		return nil // a stale nonce: the xDS server ignores the request
	}
	if detail := req.GetErrorDetail(); detail != nil {
		msg := bounded.Text(detail.GetMessage(), bounded.Message)
		if msg == "" {
			msg = "(no message)"
		}
		s.m.nacks.WithLabelValues(typeName(typeURL)).Inc()
		if ts.NackedVersion != last.version {
			s.log.Error("proxy rejected configuration; it will not be sent again until the configuration changes",
				"node", st.node, "stream", st.id, "type", typeName(typeURL), "version", last.version, "error", msg)
		}
		ts.NackedVersion, ts.NackError, ts.NackedAt = last.version, msg, now
		req.VersionInfo = last.version
		return nil
	}
	s.m.acks.WithLabelValues(typeName(typeURL)).Inc()
	ts.AckedVersion, ts.AckedAt = last.version, now
	if ts.NackedVersion != "" && ts.NackedVersion != last.version {
		ts.NackedVersion, ts.NackError = "", ""
	}
	return nil
}

func (c *callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil {
		return
	}
	st.sent[resp.GetTypeUrl()] = sent{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
	s.m.responses.WithLabelValues(typeName(resp.GetTypeUrl())).Inc()
	ts := st.typeStatus(resp.GetTypeUrl())
	ts.SentVersion, ts.SentAt, ts.Resources = resp.GetVersionInfo(), s.cfg.Now(), len(resp.GetResources())
}

var errDeltaUnsupported = errors.New("incremental (delta) xDS is not served; configure Envoy's ADS with api_type GRPC")

func (c *callbacks) OnDeltaStreamOpen(context.Context, int64, string) error {
	c.s.m.rejected.WithLabelValues("delta").Inc()
	return status.Error(codes.Unimplemented, errDeltaUnsupported.Error())
}
func (c *callbacks) OnDeltaStreamClosed(int64, *corev3.Node) {}
func (c *callbacks) OnStreamDeltaRequest(int64, *discoveryv3.DeltaDiscoveryRequest) error {
	return status.Error(codes.Unimplemented, errDeltaUnsupported.Error())
}
func (c *callbacks) OnStreamDeltaResponse(int64, *discoveryv3.DeltaDiscoveryRequest, *discoveryv3.DeltaDiscoveryResponse) {
}
func (c *callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "REST xDS is not served")
}
func (c *callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

func (st *stream) typeStatus(typeURL string) *TypeStatus {
	ts := st.types[typeURL]
	if ts == nil {
		ts = &TypeStatus{}
		st.types[typeURL] = ts
	}
	return ts
}

// TypeStatus is where one proxy stands for one resource type. The
// versions and the NACK message may come from the proxy: they are cut
// and escaped (internal/bounded) before they are stored.
type TypeStatus struct {
	SentVersion   string    `json:"sentVersion,omitempty"`
	SentAt        time.Time `json:"sentAt,omitzero"`
	Resources     int       `json:"resources"`
	AckedVersion  string    `json:"ackedVersion,omitempty"`
	AckedAt       time.Time `json:"ackedAt,omitzero"`
	NackedVersion string    `json:"nackedVersion,omitempty"`
	NackError     string    `json:"nackError,omitempty"`
	NackedAt      time.Time `json:"nackedAt,omitzero"`
}

// StreamStatus is where one ADS stream stands.
type StreamStatus struct {
	// Stream is the server's number for the stream.
	Stream int64 `json:"stream"`
	// Peer is the address the stream comes from.
	Peer string `json:"peer,omitempty"`
	// ConnectedAt is when the stream was admitted.
	ConnectedAt time.Time             `json:"connectedAt"`
	Types       map[string]TypeStatus `json:"types"`
	// Synced is true when the stream has ACKed the last response of
	// every type it was sent.
	Synced bool `json:"synced"`
}

// ProxyStatus is what the server knows of one connected proxy: a node
// with at least one open stream. Its status is that of its current
// stream, the latest admitted; any other stream open for the node is in
// OtherStreams, with its own status.
type ProxyStatus struct {
	Node     string `json:"node"`
	Workload string `json:"workload"`
	Identity string `json:"identity"`
	// Streams is how many streams the node has open.
	Streams int `json:"streams"`
	// Stream, Peer, ConnectedAt, Types and Synced are the current
	// stream's; see StreamStatus.
	Stream      int64                 `json:"stream"`
	Peer        string                `json:"peer,omitempty"`
	ConnectedAt time.Time             `json:"connectedAt"`
	Types       map[string]TypeStatus `json:"types"`
	Synced      bool                  `json:"synced"`
	// OtherStreams are the node's other open streams, oldest first.
	// There are none for an Envoy that is connected once; while there
	// are, the server cannot tell which is the proxy an operator thinks
	// of (all proved the same identity), so it shows them all.
	OtherStreams []StreamStatus `json:"otherStreams,omitempty"`
}

func (st *stream) status() StreamStatus {
	out := StreamStatus{Stream: st.id, Peer: st.peer, ConnectedAt: st.admittedAt, Types: map[string]TypeStatus{}, Synced: true}
	for t, ts := range st.types {
		out.Types[typeName(t)] = *ts
		if ts.SentVersion != ts.AckedVersion {
			out.Synced = false
		}
	}
	return out
}

// Proxies returns the status of every connected proxy, sorted by node.
// The result is a copy owned by the caller.
func (s *Server) Proxies() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for id, ps := range s.proxies {
		cur := ps.current().status()
		st := ProxyStatus{Node: id, Workload: ps.proxy.workloadKey(), Identity: ps.proxy.identity, Streams: len(ps.streams),
			Stream: cur.Stream, Peer: cur.Peer, ConnectedAt: cur.ConnectedAt, Types: cur.Types, Synced: cur.Synced}
		for _, o := range ps.streams[:len(ps.streams)-1] {
			st.OtherStreams = append(st.OtherStreams, o.status())
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// quote is a client-supplied value as it may appear in a log or error.
func quote(s string) string { return bounded.Quote(s, bounded.Name) }
