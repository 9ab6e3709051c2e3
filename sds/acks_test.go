package sds

import (
	"context"
	"crypto/x509"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/bulwarkmesh/bulwark/internal/testlog"
)

// fakeEnvoy drives the server's stream callbacks as go-control-plane
// does for an Envoy's SotW SDS stream.
type fakeEnvoy struct {
	t     *testing.T
	s     *Server
	id    int64
	names []string
	nonce int
	sent  string // the version of the last answer
}

func (e *fakeEnvoy) open(id int64, names ...string) *fakeEnvoy {
	if err := e.s.acks.OnStreamOpen(context.Background(), id, ""); err != nil {
		e.t.Fatal(err)
	}
	return &fakeEnvoy{t: e.t, s: e.s, id: id, names: names}
}

func (e *fakeEnvoy) request(version, nonce string, nack bool) *discoveryv3.DiscoveryRequest {
	req := &discoveryv3.DiscoveryRequest{ResourceNames: e.names, VersionInfo: version, ResponseNonce: nonce}
	if nack {
		req.ErrorDetail = &statuspb.Status{Code: 3, Message: "Failed to load CRL from <inline>"}
	}
	if err := e.s.acks.OnStreamRequest(e.id, req); err != nil {
		e.t.Fatal(err)
	}
	return req
}

// answer sends the current version on the stream and returns its nonce.
func (e *fakeEnvoy) answer() string {
	e.nonce++
	n := string(rune('0' + e.nonce))
	e.s.acks.mu.Lock()
	v := e.s.acks.order[len(e.s.acks.order)-1]
	e.s.acks.mu.Unlock()
	e.sent = v
	e.s.acks.OnStreamResponse(context.Background(), e.id, nil, &discoveryv3.DiscoveryResponse{VersionInfo: v, Nonce: n})
	return n
}

func TestAckedBundleFollowsEnvoysAcks(t *testing.T) {
	s, err := New(Config{CertName: "default", RootsName: "ROOTCA", Logger: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	root := newRoot(t, "root")
	l := root.leaf(t, testTrustDomain+"ns/a/sa/b")
	if err := s.UpdateCertificate(l.chain, l.key); err != nil {
		t.Fatal(err)
	}
	bundle := func(seq uint64) {
		t.Helper()
		if err := s.UpdateBundle(seq, []*x509.Certificate{root.cert}, [][]byte{root.crl(t, int64(seq))}); err != nil {
			t.Fatal(err)
		}
	}
	want := func(what string, seq uint64) {
		t.Helper()
		if got := s.AckedBundle(); got != seq {
			t.Errorf("%s: AckedBundle = %d, want %d", what, got, seq)
		}
	}
	bundle(3)
	base := &fakeEnvoy{t: t, s: s}
	cert := base.open(1, "default")
	roots := base.open(2, "ROOTCA")
	changed := s.BundleAcked()

	cert.request("", "", false)
	roots.request("", "", false)
	want("nothing answered yet", 0)
	n := cert.answer()
	cert.request(cert.sent, n, false)
	want("only the certificate acknowledged", 0)
	n = roots.answer()
	want("answered, not acknowledged", 0)
	roots.request("", n, true)
	want("refused", 0)
	if s.Nacked() != 1 {
		t.Errorf("Nacked = %d, want 1", s.Nacked())
	}
	n = roots.answer()
	roots.request(roots.sent, "9", false)
	want("a version acknowledged with another nonce", 0)
	roots.request(roots.sent, n, false)
	want("acknowledged", 3)
	select {
	case <-changed:
	default:
		t.Error("BundleAcked's channel not closed when AckedBundle moved")
	}

	// A refusal is told the cache as the refused version, so that the
	// cache does not send it again until there is a newer one.
	bundle(4)
	n = roots.answer()
	refused := roots.sent
	if req := roots.request(roots.sent, n, true); req.GetVersionInfo() != refused {
		t.Errorf("a refusal's version_info left at %q, want the refused %q", req.GetVersionInfo(), refused)
	}
	want("bundle 4 refused", 3)

	// A second stream for the bundle that has acknowledged nothing holds
	// the value down; one that reconnects with a version of ours counts
	// as holding it; one with a version of another server's does not.
	second := base.open(3, "ROOTCA")
	second.request("", "", false)
	want("a second stream, nothing acknowledged", 0)
	third := base.open(4, "ROOTCA")
	third.request("1.00000000", "", false)
	want("a stream holding another server's version", 0)
	s.acks.OnStreamClosed(3, nil)
	s.acks.OnStreamClosed(4, nil)
	want("the other streams closed", 3)
	fourth := base.open(5, "ROOTCA")
	fourth.request(refused, "", false) // Envoy reconnecting with a version of ours
	want("reconnected holding bundle 4's version, and the first stream at 3", 3)
	s.acks.OnStreamClosed(2, nil)
	want("only the reconnected stream", 4)

	// With no stream for the bundle open, the last value stays.
	s.acks.OnStreamClosed(5, nil)
	want("no stream open", 4)
}

func TestUpdateBundleRefusesWhatEnvoyWould(t *testing.T) {
	s, err := New(Config{CertName: "default", RootsName: "ROOTCA", Logger: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	root := newRoot(t, "root")
	if err := s.UpdateBundle(1, nil, nil); err == nil {
		t.Error("a bundle without roots accepted")
	}
	if err := s.UpdateBundle(1, []*x509.Certificate{root.cert}, [][]byte{[]byte("not a CRL")}); err == nil {
		t.Error("a CRL that does not parse accepted")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.roots != nil || s.version != 0 {
		t.Error("a refused bundle changed the secrets")
	}
}
