package issuer_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
)

// fakeBundles is a BundleSource the test changes by hand.
type fakeBundles struct {
	mu sync.Mutex
	b  trust.Bundle
	ch chan struct{}
}

func (f *fakeBundles) Bundle() (trust.Bundle, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.b, f.ch
}

func (f *fakeBundles) set(b trust.Bundle) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.b = b
	close(f.ch)
	f.ch = make(chan struct{})
}

// fakeRevocations revokes by serial, SPIFFE ID or workload.
type fakeRevocations struct {
	mu sync.Mutex
	m  map[string]string // key -> reason
}

func (f *fakeRevocations) revoke(key, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]string{}
	}
	f.m[key] = reason
}

func (f *fakeRevocations) unrevoke(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, key)
}

func (f *fakeRevocations) Revoked(serial string, id spiffeid.ID, workload string) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range []string{serial, workload} {
		if r, ok := f.m[k]; ok && k != "" {
			return r, true
		}
	}
	if !id.IsZero() {
		if r, ok := f.m[id.String()]; ok {
			return r, true
		}
	}
	return "", false
}

// trustEnv is a test server with a changeable bundle and revocations.
type trustEnv struct {
	*env
	bundles *fakeBundles
	revoked *fakeRevocations
	reg     *prometheus.Registry
}

func setupTrust(t *testing.T, opts ...func(*issuer.Config)) *trustEnv {
	t.Helper()
	te := &trustEnv{bundles: &fakeBundles{ch: make(chan struct{})}, revoked: &fakeRevocations{}, reg: prometheus.NewRegistry()}
	te.env = setup(t, append([]func(*issuer.Config){func(c *issuer.Config) {
		c.Bundles, c.Revoked, c.Registerer = te.bundles, te.revoked.Revoked, te.reg
	}}, opts...)...)
	te.bundles.set(te.bundle(1, []byte("crl-1")))
	return te
}

// bundle is a bundle of the test CA's roots at seq with crls (the
// issuer passes CRLs through without reading them).
func (e *trustEnv) bundle(seq uint64, crls ...[]byte) trust.Bundle {
	return trust.Bundle{TrustDomain: td, Sequence: seq, Roots: e.ca.Roots(), CRLs: crls, ReissueWithin: 90 * time.Second}
}

// watch opens a WatchTrustBundle stream presenting svid (nil: none).
func (e *trustEnv) watch(t *testing.T, svid *x509svid.SVID) cav1.CertificateService_WatchTrustBundleClient {
	t.Helper()
	tc := spiffetls.ClientConfig(nil, e.cp, cpID)
	if svid != nil {
		tc = spiffetls.ClientConfig(svid, e.cp, cpID)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := cav1.NewCertificateServiceClient(conn).WatchTrustBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// recv returns the next bundle, failing the test after 5s.
func recv(t *testing.T, s cav1.CertificateService_WatchTrustBundleClient) (*cav1.TrustBundle, error) {
	t.Helper()
	type result struct {
		b   *cav1.TrustBundle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := s.Recv()
		ch <- result{b, err}
	}()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-time.After(5 * time.Second):
		t.Fatal("no message on the trust bundle stream within 5s")
		return nil, nil
	}
}

func mustRecv(t *testing.T, s cav1.CertificateService_WatchTrustBundleClient, seq uint64) *cav1.TrustBundle {
	t.Helper()
	b, err := recv(t, s)
	if err != nil {
		t.Fatalf("waiting for bundle %d: %v", seq, err)
	}
	if b.GetSequence() != seq {
		t.Fatalf("got bundle %d, want %d", b.GetSequence(), seq)
	}
	return b
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *trustEnv) report(workload string) (issuer.BundleReport, bool) {
	for _, r := range e.iss.BundleReports() {
		if r.Workload == workload {
			return r, true
		}
	}
	return issuer.BundleReport{}, false
}

func labelled(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return sum
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// TestWatchTrustBundle: the bundle is sent at once and at every change;
// acks are recorded against the workload the certificate names, with
// the stream's certificate; an ack beyond what was sent is refused and
// counted; a renewal's answer carries the same bundle.
func TestWatchTrustBundle(t *testing.T) {
	e := setupTrust(t)
	svid, err := e.obtain(t, "demo/frontend-1", e.token(t, "demo/frontend-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := e.watch(t, svid)
	b := mustRecv(t, s, 1)
	if len(b.GetCrls()) != 1 || string(b.GetCrls()[0]) != "crl-1" || len(b.GetRoots()) != len(e.ca.Roots()) || b.GetReissueWithinMs() != 90000 {
		t.Errorf("bundle 1 = %d roots, crls %q, reissue %dms", len(b.GetRoots()), b.GetCrls(), b.GetReissueWithinMs())
	}
	waitFor(t, "a report for frontend-1", func() bool { _, ok := e.report("demo/frontend-1"); return ok })
	r, _ := e.report("demo/frontend-1")
	if !r.Connected || r.AgentSeq != 0 || r.ProxySeq != 0 || r.Leaf.SerialNumber.Cmp(svid.Certificates[0].SerialNumber) != 0 || r.Peer == "" {
		t.Errorf("report before any ack = %+v", r)
	}
	if g := gauge(t, e.reg, "bulwark_trust_bundle_watchers"); g != 1 {
		t.Errorf("watchers gauge = %v, want 1", g)
	}

	if err := s.Send(&cav1.TrustBundleAck{Sequence: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "agent at 1", func() bool { r, _ := e.report("demo/frontend-1"); return r.AgentSeq == 1 && r.ProxySeq == 0 })

	e.clock.Add(time.Minute)
	e.bundles.set(e.bundle(2, []byte("crl-2")))
	mustRecv(t, s, 2)
	if err := s.Send(&cav1.TrustBundleAck{Sequence: 2, ProxySequence: 2}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "agent and proxy at 2", func() bool { r, _ := e.report("demo/frontend-1"); return r.AgentSeq == 2 && r.ProxySeq == 2 })
	if r, _ := e.report("demo/frontend-1"); !r.Updated.Equal(e.clock.Now()) {
		t.Errorf("report updated at %s, want the issuer's clock %s", r.Updated, e.clock.Now())
	}

	// Forged: beyond the latest bundle sent, on either field.
	for _, ack := range []*cav1.TrustBundleAck{{Sequence: 3, ProxySequence: 2}, {Sequence: 2, ProxySequence: 7}} {
		if err := s.Send(ack); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two acks refused as beyond", func() bool {
		return labelled(t, e.reg, "bulwark_trust_bundle_acks_total", "result", "beyond") == 2
	})
	if r, _ := e.report("demo/frontend-1"); r.AgentSeq != 2 || r.ProxySeq != 2 {
		t.Errorf("a forged ack moved the report: %+v", r)
	}
	if n := labelled(t, e.reg, "bulwark_trust_bundle_acks_total", "result", "ok"); n != 2 {
		t.Errorf("acks ok = %v, want 2", n)
	}

	// A renewal hands out the same bundle, sequence and CRLs.
	next, err := e.renewResponse(t, "demo/frontend-1", svid)
	if err != nil {
		t.Fatal(err)
	}
	if next.GetBundleSequence() != 2 || len(next.GetCrls()) != 1 || string(next.GetCrls()[0]) != "crl-2" {
		t.Errorf("renewal's answer: bundle %d, crls %q; want 2, crl-2", next.GetBundleSequence(), next.GetCrls())
	}
}

// renewResponse renews with current and returns the whole answer.
func (e *trustEnv) renewResponse(t *testing.T, workload string, current *x509svid.SVID) (*cav1.SignCertificateResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(spiffetls.ClientConfig(current, e.cp, cpID))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return cav1.NewCertificateServiceClient(conn).SignCertificate(context.Background(), &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: workload})
}

// TestWatchTrustBundleCallers: only a certificate that names a workload
// may watch, and the report is that workload's.
func TestWatchTrustBundleCallers(t *testing.T) {
	e := setupTrust(t)
	e.withWorkload(t, "demo", "api-2", "api")
	t.Run("no certificate", func(t *testing.T) {
		_, err := recv(t, e.watch(t, nil))
		wantRefused(t, err, codes.Unauthenticated, "present your current certificate")
	})
	t.Run("a certificate that names no workload", func(t *testing.T) {
		_, err := recv(t, e.watch(t, e.svidFor(t, apiID)))
		wantRefused(t, err, codes.PermissionDenied, "names no workload")
	})
	t.Run("the workload is the certificate's", func(t *testing.T) {
		// api-1 and api-2 share a SPIFFE ID; the report follows the
		// workload the certificate was issued to.
		svid, err := e.obtain(t, "demo/api-2", e.token(t, "demo/api-2"), nil)
		if err != nil {
			t.Fatal(err)
		}
		s := e.watch(t, svid)
		mustRecv(t, s, 1)
		if err := s.Send(&cav1.TrustBundleAck{Sequence: 1, ProxySequence: 1}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "api-2 reported", func() bool { r, _ := e.report("demo/api-2"); return r.ProxySeq == 1 })
		if _, ok := e.report("demo/api-1"); ok {
			t.Error("api-2's stream reported for api-1")
		}
	})
}

// TestWatchTrustBundleCaps: two streams per workload (an agent's, and
// its next one while it reconnects), and a global cap.
func TestWatchTrustBundleCaps(t *testing.T) {
	e := setupTrust(t, func(c *issuer.Config) { c.MaxBundleWatchers = 3 })
	svid, err := e.obtain(t, "demo/frontend-1", e.token(t, "demo/frontend-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := e.watch(t, svid)
	mustRecv(t, first, 1)
	second := e.watch(t, svid)
	mustRecv(t, second, 1)
	_, err = recv(t, e.watch(t, svid))
	wantRefused(t, err, codes.ResourceExhausted, "already watches the trust bundle on 2 streams")

	// The newer stream's report is the workload's.
	if err := second.Send(&cav1.TrustBundleAck{Sequence: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second stream's ack", func() bool { r, _ := e.report("demo/frontend-1"); return r.AgentSeq == 1 })
	if len(e.iss.BundleReports()) != 1 {
		t.Errorf("reports = %+v, want one for frontend-1", e.iss.BundleReports())
	}

	api, err := e.obtain(t, "demo/api-1", e.token(t, "demo/api-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	mustRecv(t, e.watch(t, api), 1)
	_, err = recv(t, e.watch(t, api))
	wantRefused(t, err, codes.ResourceExhausted, "3 streams, its limit")
	if n := labelled(t, e.reg, "bulwark_issuer_requests_total", "result", "ResourceExhausted"); n != 2 {
		t.Errorf("refused streams counted %v, want 2", n)
	}

	// Closing one makes room.
	if err := first.CloseSend(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a stream closed", func() bool { return gauge(t, e.reg, "bulwark_trust_bundle_watchers") == 2 })
	mustRecv(t, e.watch(t, api), 1)
}

// TestWatchTrustBundleReportOutlivesItsStreamBriefly: a report stays,
// disconnected, for ReportGrace after its last stream ends, then goes.
func TestWatchTrustBundleReportOutlivesItsStreamBriefly(t *testing.T) {
	e := setupTrust(t)
	svid, err := e.obtain(t, "demo/frontend-1", e.token(t, "demo/frontend-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(spiffetls.ClientConfig(svid, e.cp, cpID))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := cav1.NewCertificateServiceClient(conn).WatchTrustBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustRecv(t, s, 1)
	if err := s.Send(&cav1.TrustBundleAck{Sequence: 1, ProxySequence: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reported", func() bool { r, _ := e.report("demo/frontend-1"); return r.ProxySeq == 1 })
	cancel()
	waitFor(t, "disconnected", func() bool { r, _ := e.report("demo/frontend-1"); return !r.Connected })
	r, _ := e.report("demo/frontend-1")
	if r.AgentSeq != 1 || r.ProxySeq != 1 {
		t.Errorf("the disconnected report lost what it held: %+v", r)
	}
	e.clock.Add(issuer.ReportGrace - time.Second)
	if _, ok := e.report("demo/frontend-1"); !ok {
		t.Fatal("the report went before ReportGrace")
	}
	e.clock.Add(2 * time.Second)
	if _, ok := e.report("demo/frontend-1"); ok {
		t.Error("the report stayed past ReportGrace")
	}
}

// TestWatchTrustBundleEndsWithTheCertificate: a stream whose certificate
// has expired is closed at the next bundle.
func TestWatchTrustBundleEndsWithTheCertificate(t *testing.T) {
	e := setupTrust(t)
	svid, err := e.obtain(t, "demo/frontend-1", e.token(t, "demo/frontend-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := e.watch(t, svid)
	mustRecv(t, s, 1)
	e.clock.Add(svid.Certificates[0].NotAfter.Sub(e.clock.Now()) + time.Second)
	e.bundles.set(e.bundle(2))
	_, err = recv(t, s)
	wantRefused(t, err, codes.Unauthenticated, "expired")
}

// TestRevokedCallersAreRefused: a revoked workload, identity or
// certificate gets no certificate by any credential and no trust bundle
// stream, and an open stream ends when its certificate is revoked.
func TestRevokedCallersAreRefused(t *testing.T) {
	e := setupTrust(t, func(c *issuer.Config) {
		c.ServiceAccounts = fakeReviewer{issuer.ServiceAccountIdentity{Namespace: "demo", ServiceAccount: "frontend", Pod: "frontend-1"}}
	})
	svid, err := e.obtain(t, "demo/frontend-1", e.token(t, "demo/frontend-1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	serial := svid.Certificates[0].SerialNumber.Text(16)
	revokedCount := func() float64 {
		return labelled(t, e.reg, "bulwark_issuer_requests_total", "result", "revoked")
	}

	t.Run("join token, workload revoked: the token is not spent", func(t *testing.T) {
		e.revoked.revoke("demo/frontend-1", "key stolen")
		defer e.revoked.unrevoke("demo/frontend-1")
		tok := e.token(t, "demo/frontend-1")
		_, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"})
		wantRefused(t, err, codes.PermissionDenied, "revoked: key stolen")
		e.revoked.unrevoke("demo/frontend-1")
		if _, err := e.sign(t, request{token: tok, workload: "demo/frontend-1"}); err != nil {
			t.Errorf("the token after unrevoke: %v", err)
		}
	})
	t.Run("join token, identity revoked", func(t *testing.T) {
		e.revoked.revoke(frontendID, "compromised")
		defer e.revoked.unrevoke(frontendID)
		_, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"})
		wantRefused(t, err, codes.PermissionDenied, "revoked: compromised")
	})
	t.Run("ServiceAccount token, identity revoked", func(t *testing.T) {
		e.revoked.revoke(frontendID, "compromised")
		defer e.revoked.unrevoke(frontendID)
		err := e.rawSign(t, &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: "demo/frontend-1"}, "ServiceAccountToken tok")
		wantRefused(t, err, codes.PermissionDenied, "revoked: compromised")
	})
	t.Run("ServiceAccount token, workload revoked", func(t *testing.T) {
		e.revoked.revoke("demo/frontend-1", "pod compromised")
		defer e.revoked.unrevoke("demo/frontend-1")
		err := e.rawSign(t, &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: "demo/frontend-1"}, "ServiceAccountToken tok")
		wantRefused(t, err, codes.PermissionDenied, "revoked: pod compromised")
	})
	t.Run("ServiceAccount token, not revoked", func(t *testing.T) {
		if err := e.rawSign(t, &cav1.SignCertificateRequest{Csr: csrDER(t), Workload: "demo/frontend-1"}, "ServiceAccountToken tok"); err != nil {
			t.Errorf("not revoked: %v", err)
		}
	})
	t.Run("renewal with a revoked certificate", func(t *testing.T) {
		e.revoked.revoke(serial, "lost laptop")
		defer e.revoked.unrevoke(serial)
		_, err := e.obtain(t, "demo/frontend-1", "", svid)
		wantRefused(t, err, codes.PermissionDenied, "certificate "+serial+": revoked: lost laptop")
		// Another certificate of the same workload renews.
		other, err := e.obtain(t, "demo/frontend-1", e.token(t, "demo/frontend-1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.obtain(t, "demo/frontend-1", "", other); err != nil {
			t.Errorf("an unrevoked certificate of the workload: %v", err)
		}
	})
	t.Run("renewal, identity revoked", func(t *testing.T) {
		e.revoked.revoke(frontendID, "compromised")
		defer e.revoked.unrevoke(frontendID)
		_, err := e.obtain(t, "demo/frontend-1", "", svid)
		wantRefused(t, err, codes.PermissionDenied, "revoked: compromised")
	})
	t.Run("the reason is bounded", func(t *testing.T) {
		e.revoked.revoke("demo/frontend-1", strings.Repeat("x", 10000))
		defer e.revoked.unrevoke("demo/frontend-1")
		_, err := e.sign(t, request{token: e.token(t, "demo/frontend-1"), workload: "demo/frontend-1"})
		if n := len(status.Convert(err).Message()); status.Code(err) != codes.PermissionDenied || n > 4096 {
			t.Errorf("refusal %s with a message of %d bytes", status.Code(err), n)
		}
	})
	t.Run("watch with a revoked certificate", func(t *testing.T) {
		e.revoked.revoke(serial, "lost laptop")
		defer e.revoked.unrevoke(serial)
		_, err := recv(t, e.watch(t, svid))
		wantRefused(t, err, codes.PermissionDenied, "revoked: lost laptop")
	})
	t.Run("watch, revoked while open", func(t *testing.T) {
		s := e.watch(t, svid)
		mustRecv(t, s, 1)
		e.revoked.revoke("demo/frontend-1", "key stolen")
		defer e.revoked.unrevoke("demo/frontend-1")
		e.bundles.set(e.bundle(2))
		_, err := recv(t, s)
		wantRefused(t, err, codes.PermissionDenied, "revoked: key stolen")
	})
	// Every refusal above was counted as revoked (the bounded one too).
	if n := revokedCount(); n != 9 {
		t.Errorf("requests counted revoked = %v, want 9", n)
	}
}
