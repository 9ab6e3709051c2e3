package sds

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"

	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// maxVersions bounds the versions remembered for an Envoy that reconnects
// holding one of them; Envoy holds one of the last few at most.
const maxVersions = 64

// sentVersion is a version answered on a stream and the bundle sequence
// it carries.
type sentVersion struct {
	version string
	seq     uint64
}

// sdsStream is what Envoy has been sent and has acknowledged on one SDS
// stream.
type sdsStream struct {
	roots bool // the stream asked for the trust bundle
	// sent holds the answers not yet acknowledged, by nonce: go-control-
	// plane answers a stream only after a request, so there is one at a
	// time, and a handful at most.
	sent  map[string]sentVersion
	acked uint64 // the bundle sequence of the version acknowledged last
}

// ackTracker watches the SDS streams (go-control-plane's server
// callbacks) for Envoy's acknowledgements of the trust bundle. An
// acknowledgement is a request on a stream whose response_nonce is the
// nonce of an answer sent on that stream, whose version_info is that
// answer's version, and which carries no error_detail.
type ackTracker struct {
	serverv3.CallbackFuncs // the rest: no-ops

	rootsName string
	log       *slog.Logger
	nacked    atomic.Int64

	mu       sync.Mutex
	streams  map[int64]*sdsStream
	versions map[string]uint64 // every recent version this server made -> its bundle sequence
	order    []string          // versions, oldest first
	value    uint64
	notify   chan struct{} // closed when value changes
}

var _ serverv3.Callbacks = (*ackTracker)(nil)

func (t *ackTracker) init(rootsName string, log *slog.Logger) {
	t.rootsName, t.log = rootsName, log
	t.streams = map[int64]*sdsStream{}
	t.versions = map[string]uint64{}
	t.notify = make(chan struct{})
}

// sent records a version made, before any stream can answer it.
func (t *ackTracker) sent(version string, seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.versions[version] = seq
	t.order = append(t.order, version)
	if len(t.order) > maxVersions {
		delete(t.versions, t.order[0])
		t.order = t.order[1:]
	}
}

func (t *ackTracker) acked() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.value
}

func (t *ackTracker) changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.notify
}

// OnStreamOpen notes a new stream.
func (t *ackTracker) OnStreamOpen(_ context.Context, id int64, _ string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[id] = &sdsStream{sent: map[string]sentVersion{}}
	return nil
}

// OnStreamClosed forgets a stream: what it held no longer counts.
func (t *ackTracker) OnStreamClosed(id int64, _ *corev3.Node) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.streams, id)
	t.recomputeLocked()
}

// OnStreamResponse notes the version sent with each nonce.
func (t *ackTracker) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		return
	}
	if len(st.sent) >= 16 {
		clear(st.sent) // never reached with go-control-plane's one answer per request
	}
	st.sent[resp.GetNonce()] = sentVersion{version: resp.GetVersionInfo(), seq: t.versions[resp.GetVersionInfo()]}
}

// OnStreamRequest reads an acknowledgement or a refusal off a request.
//
// On a refusal (NACK) it rewrites the request's version_info to the
// refused version: go-control-plane's cache answers at once any request
// whose version is not the current one, so a refused version would be
// sent again and refused again in a loop as fast as the socket goes. Told
// the client is up to date, the cache waits for the next version instead.
// Envoy keeps the secret it had.
func (t *ackTracker) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		return nil
	}
	st.roots = slices.Contains(req.GetResourceNames(), t.rootsName)
	nonce := req.GetResponseNonce()
	switch answered, ok := st.sent[nonce]; {
	case req.GetErrorDetail() != nil:
		t.nacked.Add(1)
		t.log.Error("Envoy refused the secrets; it keeps those it had",
			"secrets", bounded.Quote(strings.Join(req.GetResourceNames(), ","), bounded.Name),
			"refused_version", answered.version, "kept_version", bounded.Quote(req.GetVersionInfo(), bounded.Name),
			"err", bounded.Text(req.GetErrorDetail().GetMessage(), bounded.Message))
		if ok {
			req.VersionInfo = answered.version
			delete(st.sent, nonce)
		}
	case nonce != "" && ok && answered.version == req.GetVersionInfo():
		st.acked = answered.seq
		clear(st.sent)
	case nonce == "":
		// A new stream: Envoy tells the version it already holds, which
		// counts when it is one of ours (it reconnected).
		if seq, known := t.versions[req.GetVersionInfo()]; known {
			st.acked = seq
		}
	}
	t.recomputeLocked()
	return nil
}

// recomputeLocked sets the value to the lowest acknowledged bundle over
// the streams that asked for it, keeping it when there are none.
func (t *ackTracker) recomputeLocked() {
	var low uint64
	asked := false
	for _, st := range t.streams {
		if !st.roots {
			continue
		}
		if !asked || st.acked < low {
			low = st.acked
		}
		asked = true
	}
	if !asked || low == t.value {
		return
	}
	t.value = low
	close(t.notify)
	t.notify = make(chan struct{})
}
