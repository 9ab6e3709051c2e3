package server_test

import (
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

// TestASecondStreamsNACKIsNotTheFirstStreams: frontend-1 runs what it
// was sent; a second stream with frontend's certificate and node ID (a
// restarting Envoy, or someone holding frontend's key) NACKs. The status
// keeps each stream's own: the first stream stays SYNCED, and the NACK
// shows on the stream that sent it.
func TestASecondStreamsNACKIsNotTheFirstStreams(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	real := h.dial(t, "demo/frontend-1")
	syncAll(t, real)
	testwait.Until(t, "frontend-1 synced", 5*time.Second, func() bool {
		ps := h.srv.Proxies()
		return len(ps) == 1 && ps[0].Synced
	})
	first := h.srv.Proxies()[0]

	other := h.dial(t, "demo/frontend-1")
	other.Subscribe(resourcev3.ClusterType)
	cds := other.Recv(resourcev3.ClusterType, 5*time.Second)
	other.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: cds.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "forged\x1b[2J"}})
	testwait.Until(t, "the second stream's NACK recorded", 5*time.Second, func() bool {
		ps := h.srv.Proxies()
		return len(ps) == 1 && ps[0].Types["cds"].NackError != ""
	})

	ps := h.srv.Proxies()
	if len(ps) != 1 {
		t.Fatalf("proxies = %+v, want frontend-1 once", ps)
	}
	p := ps[0]
	// The node's status is its latest stream's: the one that NACKed, and
	// it says it has company.
	if p.Streams != 2 || p.Stream == first.Stream || p.Synced {
		t.Errorf("node status: streams %d, stream %d (first was %d), synced %v; want the second stream's, not synced",
			p.Streams, p.Stream, first.Stream, p.Synced)
	}
	if got := p.Types["cds"].NackError; strings.Contains(got, "\x1b") || !strings.Contains(got, `forged\x1b[2J`) {
		t.Errorf("the NACK is %q, want it escaped", got)
	}
	// The first stream is shown as itself, synced, without the NACK.
	if len(p.OtherStreams) != 1 {
		t.Fatalf("other streams = %+v, want the first", p.OtherStreams)
	}
	o := p.OtherStreams[0]
	if o.Stream != first.Stream || !o.Synced || o.Peer == "" {
		t.Errorf("first stream: %+v, want stream %d, synced, with its peer", o, first.Stream)
	}
	for typ, ts := range o.Types {
		if ts.NackError != "" || ts.AckedVersion != ts.SentVersion {
			t.Errorf("first stream's %s: %+v, want it as it ACKed it", typ, ts)
		}
	}

	// The second stream leaves: the node's status is the first's again.
	other.Close()
	testwait.Until(t, "the node back to its first stream", 5*time.Second, func() bool {
		ps := h.srv.Proxies()
		return len(ps) == 1 && ps[0].Streams == 1 && ps[0].Stream == first.Stream && ps[0].Synced &&
			ps[0].Types["cds"].NackError == "" && len(ps[0].OtherStreams) == 0
	})
}
