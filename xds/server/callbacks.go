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
	"google.golang.org/grpc/status"

	"github.com/bulwarkmesh/bulwark/model"
)

func sotwOrdered() config.XDSOption { return sotwv3.WithOrderedADS() }

func sotwLogger(l gcplog.Logger) config.XDSOption { return sotwv3.WithLogger(l) }

// stream is one open ADS stream. Its fields are guarded by Server.mu.
type stream struct {
	id       int64
	ctx      context.Context
	identity string // the peer's verified SPIFFE ID
	node     string
	// sent remembers, per type URL, the nonce and version of the last
	// response, to tell an ACK from a NACK and which version a NACK
	// rejects.
	sent map[string]sent
}

type sent struct {
	nonce, version string
}

// proxyState is what the server knows of one connected proxy. Guarded
// by Server.mu.
type proxyState struct {
	proxy   *proxy
	streams int
	types   map[string]*TypeStatus
}

type callbacks struct{ s *Server }

var _ serverv3.Callbacks = (*callbacks)(nil)

func (c *callbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	if typeURL != "" {
		c.s.m.rejected.WithLabelValues("not_ads").Inc()
		return status.Errorf(codes.Unimplemented, "only aggregated discovery (ADS) is served")
	}
	peer, err := c.s.cfg.Identify(ctx)
	if err != nil {
		c.s.m.rejected.WithLabelValues("unauthenticated").Inc()
		c.s.log.Warn("stream refused: no verified client certificate", "err", err)
		return status.Errorf(codes.Unauthenticated, "ADS needs a client certificate of the trust domain: %v", err)
	}
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.s.streams[id] = &stream{id: id, ctx: ctx, identity: peer.String(), sent: map[string]sent{}}
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
			ps.streams--
			if ps.streams == 0 {
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
			s.log.Warn("stream refused: node ID is not <namespace>/<workload>", "node", nodeID)
			return status.Errorf(codes.InvalidArgument, "node ID %q is not <namespace>/<workload>", nodeID)
		}
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
		st.node = nodeID
		ps := s.proxies[nodeID]
		isNew := ps == nil
		if isNew {
			ps = &proxyState{
				proxy: &proxy{id: nodeID, namespace: ns, workload: name, identity: st.identity, connectedAt: s.cfg.Now()},
				types: map[string]*TypeStatus{},
			}
			s.proxies[nodeID] = ps
		}
		ps.streams++
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
		return status.Errorf(codes.InvalidArgument, "node ID changed from %q to %q on one stream", st.node, nodeID)
	}
	// Binding the request to the stream looks up every name it
	// subscribes to; no other stream needs to wait for that. (This
	// stream's state stays: requests and the stream's end are handled
	// on one goroutine.)
	s.mu.Unlock()
	s.cache.Bind(req, id)
	s.mu.Lock()
	defer s.mu.Unlock()

	typeURL := req.GetTypeUrl()
	ts := s.proxies[st.node].typeStatus(typeURL)
	now := s.cfg.Now()
	last, ok := st.sent[typeURL]
	if !ok {
		// The first request of a type on this stream. A proxy that
		// reconnects reports the version it runs; we answer it anyway, so
		// every new stream converges the same way whether or not the
		// control plane (restarted, or another replica) agrees with that
		// version, and the status shows a response and its ACK.
		if v := req.GetVersionInfo(); v != "" && req.GetResponseNonce() == "" {
			ts.AckedVersion, ts.AckedAt = v, now
			req.VersionInfo = ""
		}
		return nil
	}
	if req.GetResponseNonce() == "" || req.GetResponseNonce() != last.nonce {
		return nil // a stale nonce: the xDS server ignores the request
	}
	if detail := req.GetErrorDetail(); detail != nil {
		s.m.nacks.WithLabelValues(typeName(typeURL)).Inc()
		if ts.NackedVersion != last.version {
			s.log.Error("proxy rejected configuration; it will not be sent again until the configuration changes",
				"node", st.node, "type", typeName(typeURL), "version", last.version, "error", detail.GetMessage())
		}
		ts.NackedVersion, ts.NackError, ts.NackedAt = last.version, detail.GetMessage(), now
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
	if ps := s.proxies[st.node]; ps != nil {
		ts := ps.typeStatus(resp.GetTypeUrl())
		ts.SentVersion, ts.SentAt, ts.Resources = resp.GetVersionInfo(), s.cfg.Now(), len(resp.GetResources())
	}
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

func (p *proxyState) typeStatus(typeURL string) *TypeStatus {
	ts := p.types[typeURL]
	if ts == nil {
		ts = &TypeStatus{}
		p.types[typeURL] = ts
	}
	return ts
}

// TypeStatus is where one proxy stands for one resource type.
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

// ProxyStatus is what the server knows of one connected proxy.
type ProxyStatus struct {
	Node        string                `json:"node"`
	Workload    string                `json:"workload"`
	Identity    string                `json:"identity"`
	Streams     int                   `json:"streams"`
	ConnectedAt time.Time             `json:"connectedAt"`
	Types       map[string]TypeStatus `json:"types"`
	// Synced is true when the proxy has ACKed the last response of every
	// type it was sent.
	Synced bool `json:"synced"`
}

// Proxies returns the status of every connected proxy, sorted by node.
// The result is a copy owned by the caller.
func (s *Server) Proxies() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for id, ps := range s.proxies {
		st := ProxyStatus{Node: id, Workload: ps.proxy.workloadKey(), Identity: ps.proxy.identity, Streams: ps.streams,
			ConnectedAt: ps.proxy.connectedAt, Types: map[string]TypeStatus{}, Synced: true}
		for t, ts := range ps.types {
			st.Types[typeName(t)] = *ts
			if ts.SentVersion != ts.AckedVersion {
				st.Synced = false
			}
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.Node, b.Node) })
	return out
}
