package server_test

import (
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// maxLine is what one client's request may cost in the log, in an
// error on the wire or in a proxy's status.
const maxLine = 4 << 10

const escapes = "\x1b]0;pwned\x07\x1b[2J\x1b[31m"

func checkBounded(t *testing.T, what, s string) {
	t.Helper()
	if len(s) > maxLine || strings.ContainsAny(s, "\x1b\x07") {
		t.Errorf("%s: %d bytes, or a raw escape: %.300q", what, len(s), s)
	}
}

// TestHugeNodeIDIsBoundedInLogsAndErrors: a 10,000-character node ID with
// terminal escapes is refused with an error, and a log line, of a few
// KiB, escaped.
func TestHugeNodeIDIsBoundedInLogsAndErrors(t *testing.T) {
	logger, lines := testlog.Capture()
	h := startServer(t, newStore(t, testMesh("10.0.0.2")), func(c *server.Config) { c.Logger = logger })
	c := h.dial(t, escapes+strings.Repeat("n", 10_000))
	c.Subscribe(resourcev3.ClusterType)
	select {
	case err := <-c.Errs:
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("stream ended with %s, want InvalidArgument", status.Code(err))
		}
		checkBounded(t, "the error", status.Convert(err).Message())
		if !strings.Contains(status.Convert(err).Message(), `\x1b]0;pwned\a`) {
			t.Errorf("the error does not show the escapes, escaped: %.300q", status.Convert(err).Message())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not refused")
	}
	testwait.Until(t, "the refusal logged", 5*time.Second, func() bool {
		return strings.Contains(strings.Join(lines.All(), "\n"), "stream refused")
	})
	for _, l := range lines.All() {
		checkBounded(t, "a log line", l)
	}
}

// TestWhatAnAdmittedProxySendsIsBounded: a proxy that is who it says it
// is still sends text the control plane logs and shows: its NACK
// message, the version it reports on a new stream, type URLs. All of it
// is bounded and escaped.
func TestWhatAnAdmittedProxySendsIsBounded(t *testing.T) {
	logger, lines := testlog.Capture()
	h := startServer(t, newStore(t, testMesh("10.0.0.2")), func(c *server.Config) { c.Logger = logger })
	c := h.dial(t, "demo/frontend-1")
	huge := escapes + strings.Repeat("x", 1<<20)
	// A version on the first request of a type is what the proxy says it
	// runs; it shows in the status.
	c.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: huge})
	cds := c.Recv(resourcev3.ClusterType, 5*time.Second)
	c.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: huge, ResponseNonce: cds.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: huge}})
	testwait.Until(t, "the NACK in the status", 5*time.Second, func() bool {
		ps := h.srv.Proxies()
		return len(ps) == 1 && ps[0].Types["cds"].NackError != ""
	})
	ts := h.srv.Proxies()[0].Types["cds"]
	checkBounded(t, "the NACK error in the status", ts.NackError)
	checkBounded(t, "the version in the status", ts.AckedVersion)
	for _, l := range lines.All() {
		checkBounded(t, "a log line", l)
	}
	if !strings.Contains(strings.Join(lines.All(), "\n"), "proxy rejected configuration") {
		t.Error("the NACK was not logged")
	}
}

// TestStreamsAndTypesPerNodeAreCapped: one node cannot make the server
// keep state without bound, by streams or by type URLs, and an unknown
// type URL mints no metric label and no status entry.
func TestStreamsAndTypesPerNodeAreCapped(t *testing.T) {
	h := startServer(t, newStore(t, testMesh("10.0.0.2")))
	var open []*adstest.Client
	for range 8 {
		c := h.dial(t, "demo/frontend-1")
		c.Subscribe(resourcev3.ClusterType)
		c.Recv(resourcev3.ClusterType, 5*time.Second)
		open = append(open, c)
	}
	ninth := h.dial(t, "demo/frontend-1")
	ninth.Subscribe(resourcev3.ClusterType)
	ninth.Refused(codes.ResourceExhausted, "already has 8 ADS streams open")
	if n := metric(t, h.reg, "bulwark_xds_rejected_streams_total", "too_many_streams"); n != 1 {
		t.Errorf("refusals counted = %v, want 1", n)
	}
	// A stream that closes makes room again.
	open[0].Close()
	testwait.Until(t, "a stream closed", 5*time.Second, func() bool { return h.srv.Proxies()[0].Streams == 7 })
	again := h.dial(t, "demo/frontend-1")
	again.Subscribe(resourcev3.ClusterType)
	again.Recv(resourcev3.ClusterType, 5*time.Second)

	// Type URLs: the four a sidecar asks for, and then made-up ones.
	c := open[1]
	for i := range 15 {
		c.Subscribe("type.googleapis.com/made.up.Type" + strings.Repeat("x", 1000) + string(rune('a'+i)))
	}
	c.Quiet(200 * time.Millisecond) // unknown types are never answered
	c.Subscribe("type.googleapis.com/one.too.Many")
	c.Refused(codes.InvalidArgument, "more than 16 resource types")
	for _, p := range h.srv.Proxies() {
		for name := range p.Types {
			if typeName := name; typeName != "cds" {
				t.Errorf("status has type %.100q", typeName)
			}
		}
	}
}
