package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// manualClock is a clock only the test moves: After fires once Advance
// has moved the clock past it. Every wait asked for is recorded.
type manualClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []clockWaiter
	waits   []time.Duration
}

type clockWaiter struct {
	at time.Time
	ch chan time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, clockWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// Waits returns the waits asked for so far.
func (c *manualClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.waits)
}

// pushCA is a control plane whose trust bundle the test pushes, and
// which signs with whichever of its authorities the test says.
type pushCA struct {
	cav1.UnimplementedCertificateServiceServer
	id spiffeid.ID

	mu      sync.Mutex
	signer  *ca.CA
	current *cav1.TrustBundle
	changed chan struct{}
	signed  int // SignCertificate calls answered
	acks    []*cav1.TrustBundleAck
	ackCh   chan struct{} // closed at every ack
}

func (p *pushCA) push(b *cav1.TrustBundle) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.current = b
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *pushCA) signWith(c *ca.CA) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signer = c
}

func (p *pushCA) signedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.signed
}

func (p *pushCA) SignCertificate(_ context.Context, req *cav1.SignCertificateRequest) (*cav1.SignCertificateResponse, error) {
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	signer, b := p.signer, p.current
	p.signed++
	p.mu.Unlock()
	ns, name, _ := strings.Cut(req.GetWorkload(), "/")
	chain, err := signer.SignWorkloadSVID(csr.PublicKey, p.id, ca.Workload{Namespace: ns, Name: name}, 0)
	if err != nil {
		return nil, err
	}
	resp := &cav1.SignCertificateResponse{SpiffeId: p.id.String(), TrustBundle: b.GetRoots(), BundleSequence: b.GetSequence(), Crls: b.GetCrls()}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, c.Raw)
	}
	return resp, nil
}

func (p *pushCA) WatchTrustBundle(stream cav1.CertificateService_WatchTrustBundleServer) error {
	go func() {
		for {
			ack, err := stream.Recv()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.acks = append(p.acks, ack)
			close(p.ackCh)
			p.ackCh = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	for {
		p.mu.Lock()
		b, changed := p.current, p.changed
		p.mu.Unlock()
		if err := stream.Send(b); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// waitAck waits until the agent has sent an ack equal to want.
func (p *pushCA) waitAck(t *testing.T, want *cav1.TrustBundleAck) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		ch := p.ackCh
		for _, a := range p.acks {
			if a.GetSequence() == want.GetSequence() && a.GetProxySequence() == want.GetProxySequence() {
				p.mu.Unlock()
				return
			}
		}
		got := slices.Clone(p.acks)
		p.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no ack {%d %d} within 10s; acks: %v", want.GetSequence(), want.GetProxySequence(), got)
		}
	}
}

// pushEnv is an agent running against a pushCA, with a manual clock.
type pushEnv struct {
	cp       *pushCA
	a        *Agent
	clock    *manualClock
	cas      []*ca.CA
	signing  []*x509.Certificate // each CA's signing certificate
	keys     []crypto.Signer     // and its key
	sock     string
	runErr   chan error
	cancel   context.CancelFunc
	logLines func() []string
}

// newCA makes a CA of its own root in trust domain td, and returns its
// signing certificate and key too.
func newCA(t *testing.T, td spiffeid.TrustDomain) (*ca.CA, *x509.Certificate, crypto.Signer) {
	t.Helper()
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td}})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := c.SignSVID(key.Public(), spiffeid.RequireFromPath(td, "/probe"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, ca.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := pemutil.ParseKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c, chain[1], signer
}

func rawCerts(cs ...*x509.Certificate) [][]byte {
	var out [][]byte
	for _, c := range cs {
		out = append(out, c.Raw)
	}
	return out
}

// startPush runs an agent against a control plane serving with the
// first of two CAs and trusting both, whose bundle starts as first.
func startPush(t *testing.T, first func(e *pushEnv) *cav1.TrustBundle) *pushEnv {
	t.Helper()
	return startPushWith(t, nil, first)
}

// startPushWith is startPush with the agent's Config adjusted by cfg.
func startPushWith(t *testing.T, cfg func(*Config), first func(e *pushEnv) *cav1.TrustBundle) *pushEnv {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	e := &pushEnv{clock: &manualClock{now: time.Now()}}
	for range 2 {
		c, signing, key := newCA(t, td)
		e.cas, e.signing, e.keys = append(e.cas, c), append(e.signing, signing), append(e.keys, key)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	t.Cleanup(cancel)
	cpID := contract.ControlPlaneID(td)
	own, err := e.cas[0].NewSource(ctx, cpID, time.Hour, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	roots := append(slices.Clone(e.cas[0].Roots()), e.cas[1].Roots()...)
	e.cp = &pushCA{id: spiffeid.RequireFromPath(td, "/ns/demo/sa/frontend"), signer: e.cas[0], changed: make(chan struct{}), ackCh: make(chan struct{})}
	e.cp.current = first(e)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, x509bundle.FromX509Authorities(td, roots), td))))
	cav1.RegisterCertificateServiceServer(g, e.cp)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)

	dir, err := os.MkdirTemp("", "bwag-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e.sock = filepath.Join(dir, "sds.sock")
	log, lines := testlog.Capture()
	e.logLines = lines.All
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", lines.String())
		}
	})
	c := Config{Workload: "demo/frontend-1", ControlPlane: lis.Addr().String(), ControlPlaneID: cpID,
		TrustBundle: roots, JoinToken: "bwjt_test", SDSSocket: e.sock,
		Logger: log, Now: e.clock.Now, After: e.clock.After}
	if cfg != nil {
		cfg(&c)
	}
	e.a, err = New(c)
	if err != nil {
		t.Fatal(err)
	}
	e.runErr = make(chan error, 1)
	go func() { e.runErr <- e.a.Run(ctx) }()
	select {
	case <-e.a.Ready():
	case err := <-e.runErr:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready within 10s")
	}
	return e
}

// fakeEnvoy asks the agent's SDS socket for the trust bundle as Envoy
// does, and acknowledges every answer unless told to hold.
type fakeEnvoy struct {
	mu    sync.Mutex
	got   []*tlsv3.CertificateValidationContext
	gotCh chan struct{}
}

func startFakeEnvoy(t *testing.T, sock string) *fakeEnvoy {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEnvoy{gotCh: make(chan struct{})}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "demo/frontend-1"}, TypeUrl: resourcev3.SecretType,
		ResourceNames: []string{contract.SecretRoots}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			var s tlsv3.Secret
			if len(resp.GetResources()) == 1 {
				if err := resp.GetResources()[0].UnmarshalTo(&s); err != nil {
					return
				}
			}
			f.mu.Lock()
			f.got = append(f.got, s.GetValidationContext())
			close(f.gotCh)
			f.gotCh = make(chan struct{})
			f.mu.Unlock()
			if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType, ResourceNames: []string{contract.SecretRoots},
				VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
				return
			}
		}
	}()
	return f
}

// waitCRL waits for an answer whose CRL holds der.
func (f *fakeEnvoy) waitCRL(t *testing.T, der []byte) *tlsv3.CertificateValidationContext {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		f.mu.Lock()
		ch := f.got
		wake := f.gotCh
		f.mu.Unlock()
		for _, vc := range ch {
			if crlPEMHolds(vc.GetCrl().GetInlineBytes(), der) {
				return vc
			}
		}
		select {
		case <-wake:
		case <-deadline:
			t.Fatalf("the fake Envoy got no trust bundle with the CRL within 10s (%d answers)", len(ch))
		}
	}
}

func (f *fakeEnvoy) answers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got)
}

// crlPEMHolds says whether the PEM list holds the DER CRL.
func crlPEMHolds(pemList, der []byte) bool {
	for _, c := range parsePEMCRLs(pemList) {
		if string(c) == string(der) {
			return true
		}
	}
	return false
}

func parsePEMCRLs(data []byte) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b.Bytes)
	}
}

// TestPushedBundleReachesSDSAndIsAcked: a pushed bundle is installed in
// the SDS trust bundle with its CRL, the agent acks it at once, and acks
// again when Envoy has loaded it; an older bundle is ignored.
func TestPushedBundleReachesSDSAndIsAcked(t *testing.T) {
	e := startPush(t, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 4, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...)}
	})
	// No Envoy asked for the bundle yet: the agent holds 4, Envoy nothing.
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 4, ProxySequence: 0})
	envoy := startFakeEnvoy(t, e.sock)
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 4, ProxySequence: 4})

	crl := signedCRL(t, e, 0, 5)
	e.cp.push(&cav1.TrustBundle{Sequence: 5, Roots: rawCerts(e.cas[0].Roots()...), Crls: [][]byte{crl}})
	vc := envoy.waitCRL(t, crl)
	if !vc.GetOnlyVerifyLeafCertCrl() {
		t.Error("the trust bundle with a CRL does not set only_verify_leaf_cert_crl")
	}
	if roots := string(vc.GetTrustedCa().GetInlineBytes()); strings.Count(roots, "BEGIN CERTIFICATE") != 1 {
		t.Errorf("trusted_ca holds %d certificates, want bundle 5's one root", strings.Count(roots, "BEGIN CERTIFICATE"))
	}
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 5, ProxySequence: 5})
	if agentSeq, proxySeq := e.a.BundleSequence(); agentSeq != 5 || proxySeq != 5 {
		t.Errorf("BundleSequence = %d, %d; want 5, 5", agentSeq, proxySeq)
	}

	// An older bundle (a lagging replica) changes nothing.
	answers := envoy.answers()
	e.cp.push(&cav1.TrustBundle{Sequence: 3, Roots: rawCerts(e.cas[1].Roots()...), Crls: [][]byte{signedCRL(t, e, 0, 3)}})
	waitLog(t, e, "trust bundle older than the one held, ignored")
	if agentSeq, proxySeq := e.a.BundleSequence(); agentSeq != 5 || proxySeq != 5 {
		t.Errorf("after an older bundle: BundleSequence = %d, %d; want 5, 5", agentSeq, proxySeq)
	}
	crl6 := signedCRL(t, e, 0, 6)
	e.cp.push(&cav1.TrustBundle{Sequence: 6, Roots: rawCerts(e.cas[0].Roots()...), Crls: [][]byte{crl6}})
	envoy.waitCRL(t, crl6)
	envoy.mu.Lock()
	next := envoy.got[answers]
	envoy.mu.Unlock()
	if !crlPEMHolds(next.GetCrl().GetInlineBytes(), crl6) {
		t.Error("the answer after bundle 5 is not bundle 6's: the older bundle reached SDS")
	}
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 6, ProxySequence: 6})
}

func waitLog(t *testing.T, e *pushEnv, msg string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, l := range e.logLines() {
			if strings.Contains(l, msg) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q within 10s", msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitSigned waits until the control plane has answered n requests.
func waitSigned(t *testing.T, e *pushEnv, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.cp.signedCount() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d certificate requests within 10s, want %d", e.cp.signedCount(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitLeaf waits until the agent's leaf is signing's.
func waitLeaf(t *testing.T, e *pushEnv, what string, signing *x509.Certificate) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !issuedBy(e.a.SVID().Certificates[0], signing) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitWait waits until the agent has asked the clock for a wait that
// satisfies ok, after the first from waits, and returns it.
func waitWait(t *testing.T, e *pushEnv, from int, what string, ok func(time.Duration) bool) (time.Duration, int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ws := e.clock.Waits()
		for i := from; i < len(ws); i++ {
			if ok(ws[i]) {
				return ws[i], i
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent did not wait for %s within 10s; waits: %v", what, ws[from:])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReissueAfterActivationOnceWithinTheWindow: a bundle naming another
// signing authority has the agent renew at a random moment within the
// window, once: a renewal that still comes back from the old authority
// (a replica that has not switched yet) does not start another.
func TestReissueAfterActivationOnceWithinTheWindow(t *testing.T) {
	const window = 10 * time.Minute
	e := startPush(t, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 1, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw}
	})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 1})
	waitSigned(t, e, 1)
	// The first certificate, from authority 0, which signs: the agent
	// waits for its renewal at 40-60% of its life.
	_, i := waitWait(t, e, 0, "the first renewal", func(d time.Duration) bool { return d > time.Hour })

	// Authority 1 is activated, but this replica still signs with 0.
	e.cp.push(&cav1.TrustBundle{Sequence: 2, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...),
		SigningCa: e.signing[1].Raw, ReissueWithinMs: window.Milliseconds()})
	delay, i := waitWait(t, e, i+1, "a reissue within the window", func(d time.Duration) bool { return d < window })
	if delay < 0 {
		t.Errorf("reissue delay %s, want in [0, %s)", delay, window)
	}
	e.clock.Advance(delay)
	waitSigned(t, e, 2)
	// The renewed leaf is still authority 0's; the stream reconnects with
	// it and gets bundle 2 again, which does not start another reissue:
	// the next wait is the ordinary renewal, hours away.
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 2})
	_, j := waitWait(t, e, i+1, "the next ordinary renewal", func(d time.Duration) bool { return d > time.Hour })
	e.clock.Advance(window)
	time.Sleep(200 * time.Millisecond)
	if n := e.cp.signedCount(); n != 2 {
		t.Errorf("%d certificate requests, want 2 (the first and one reissue)", n)
	}
	for _, d := range e.clock.Waits()[j+1:] {
		if d < time.Hour {
			t.Errorf("after the reissue the agent waits %s: another reissue, or a loop", d)
		}
	}

	// Now this replica signs with authority 1 too; a new bundle with the
	// same signing authority reissues once more, onto authority 1, and
	// after that the leaf is authority 1's and nothing more happens.
	e.cp.signWith(e.cas[1])
	e.cp.push(&cav1.TrustBundle{Sequence: 3, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...),
		SigningCa: e.signing[1].Raw, ReissueWithinMs: window.Milliseconds()})
	delay, _ = waitWait(t, e, j+1, "a reissue within the window", func(d time.Duration) bool { return d < window })
	e.clock.Advance(delay)
	waitSigned(t, e, 3)
	waitLeaf(t, e, "the reissued leaf is authority 1's", e.signing[1])
	e.cp.push(&cav1.TrustBundle{Sequence: 4, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...),
		SigningCa: e.signing[1].Raw, ReissueWithinMs: window.Milliseconds()})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 4})
	e.clock.Advance(window)
	time.Sleep(200 * time.Millisecond)
	if n := e.cp.signedCount(); n != 3 {
		t.Errorf("%d certificate requests, want 3: a leaf of the signing authority was reissued", n)
	}
}

// TestLeafOutsideTheNewRootsRenewsAtOnce: a bundle whose roots the
// current leaf does not chain to has the agent renew at once.
func TestLeafOutsideTheNewRootsRenewsAtOnce(t *testing.T) {
	e := startPush(t, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 1, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw}
	})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 1})
	waitSigned(t, e, 1)
	// The control plane serves with authority 0's certificate, so the
	// agent needs root 0 to reach it: the leaf is moved to authority 1
	// first (window 0: at once), then root 1 leaves the bundle.
	e.cp.signWith(e.cas[1])
	e.cp.push(&cav1.TrustBundle{Sequence: 2, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[1].Raw})
	_, i := waitWait(t, e, 0, "a reissue", func(d time.Duration) bool { return d <= 0 })
	waitSigned(t, e, 2)
	waitLeaf(t, e, "the leaf is authority 1's", e.signing[1])
	// Authority 1 is removed from the bundle (forced): the leaf no longer
	// chains, and the agent renews at once, from authority 0 again.
	e.cp.signWith(e.cas[0])
	e.cp.push(&cav1.TrustBundle{Sequence: 3, Roots: rawCerts(e.cas[0].Roots()...), SigningCa: e.signing[0].Raw})
	waitWait(t, e, i+1, "an immediate renewal", func(d time.Duration) bool { return d <= 0 })
	waitSigned(t, e, 3)
	waitLeaf(t, e, "after the renewal the leaf is authority 0's", e.signing[0])
}

// signedCRL is an empty CRL signed by authority i of e, as the control
// plane publishes one for each authority neither removed nor revoked.
func signedCRL(t *testing.T, e *pushEnv, i int, number int64) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, e.signing[i], e.keys[i])
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestLeafOfARevokedAuthorityRenewsAtOnce: when the authority that
// signed the leaf is revoked, its CRL leaves the bundle while its root
// may stay, and every peer refuses the leaf from then on (Envoy refuses
// a leaf whose issuer has no CRL). The agent renews at once, not at a
// random moment of the re-issue window, which is for an ordinary
// activation where the old leaf stays good.
func TestLeafOfARevokedAuthorityRenewsAtOnce(t *testing.T) {
	const window = 10 * time.Minute
	e := startPush(t, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 1, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw,
			Crls: [][]byte{signedCRL(t, e, 0, 1), signedCRL(t, e, 1, 1)}}
	})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 1})
	waitSigned(t, e, 1)
	_, i := waitWait(t, e, 0, "the first renewal", func(d time.Duration) bool { return d > time.Hour })

	// Authority 0 is revoked: authority 1 signs, and only its CRL is in
	// the bundle; both roots stay.
	e.cp.signWith(e.cas[1])
	e.cp.push(&cav1.TrustBundle{Sequence: 2, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[1].Raw,
		Crls: [][]byte{signedCRL(t, e, 1, 2)}, ReissueWithinMs: window.Milliseconds()})
	waitWait(t, e, i+1, "an immediate renewal", func(d time.Duration) bool { return d <= 0 })
	waitSigned(t, e, 2)
	waitLeaf(t, e, "after the renewal the leaf is authority 1's", e.signing[1])
}

// TestPushedBundleReachesTheRealEnvoy: the agent runs the real Envoy; a
// pushed bundle's CRL is in the trust bundle Envoy loaded (its admin
// config_dump), and the agent reports it only once Envoy acknowledged it.
func TestPushedBundleReachesTheRealEnvoy(t *testing.T) {
	bin := envoytest.Bin(t)
	dir, err := os.MkdirTemp("", "bwag-envoy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := l.Addr().String()
	l.Close()
	e := startPushWith(t, func(c *Config) {
		c.BootstrapPath, c.AdminAddress = filepath.Join(dir, "envoy.yaml"), admin
		c.Envoy = &EnvoyConfig{Bin: bin, Stderr: io.Discard, Stdout: io.Discard}
	}, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 1, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...)}
	})
	// Envoy's bootstrap cluster to the control plane asks for the trust
	// bundle over SDS: Envoy loads bundle 1.
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 1, ProxySequence: 1})

	// Envoy is stopped while bundle 2 arrives: the agent reports it holds
	// 2 and Envoy 1, and reports 2 for Envoy only once Envoy, running
	// again, has acknowledged it.
	if err := syscall.Kill(e.a.Envoy().PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	crl := signedCRL(t, e, 0, 2)
	e.cp.push(&cav1.TrustBundle{Sequence: 2, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), Crls: [][]byte{crl}})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 2, ProxySequence: 1})
	time.Sleep(300 * time.Millisecond)
	if _, proxy := e.a.BundleSequence(); proxy != 1 {
		t.Errorf("with Envoy stopped, the agent says Envoy holds bundle %d, want 1", proxy)
	}
	if err := syscall.Kill(e.a.Envoy().PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 2, ProxySequence: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := e.a.Envoy().Admin(ctx, "/config_dump?resource=dynamic_active_secrets")
	if err != nil {
		t.Fatal(err)
	}
	var dump struct {
		Configs []struct {
			Name   string          `json:"name"`
			Secret json.RawMessage `json:"secret"`
		} `json:"configs"`
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range dump.Configs {
		var s tlsv3.Secret
		if c.Name != contract.SecretRoots {
			continue
		}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(c.Secret, &s); err != nil {
			t.Fatal(err)
		}
		vc := s.GetValidationContext()
		found = crlPEMHolds(vc.GetCrl().GetInlineBytes(), crl) && vc.GetOnlyVerifyLeafCertCrl()
	}
	if !found {
		t.Errorf("Envoy's loaded trust bundle has no CRL of bundle 2 with only_verify_leaf_cert_crl:\n%s", body)
	}
}

// TestRenewalNotPostponedByABundle: a reissue later than the renewal
// already due does not move the renewal: it stays where it was.
func TestRenewalNotPostponedByABundle(t *testing.T) {
	e := startPush(t, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 1, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw}
	})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 1})
	first, i := waitWait(t, e, 0, "the first renewal", func(d time.Duration) bool { return d > time.Hour })
	e.clock.Advance(first - time.Hour)
	// A reissue window of two days: the random moment is almost surely
	// after the renewal due in an hour.
	e.cp.push(&cav1.TrustBundle{Sequence: 2, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...),
		SigningCa: e.signing[1].Raw, ReissueWithinMs: (48 * time.Hour).Milliseconds()})
	waitLog(t, e, "another authority signs now")
	next, _ := waitWait(t, e, i+1, "the renewal after the wake-up", func(time.Duration) bool { return true })
	if next > time.Hour {
		t.Errorf("after the bundle the agent waits %s to renew, want at most the hour left", next)
	}
}

// TestBundleWithACRLOutOfTimeIsKept: a bundle whose CRL is not valid on
// this host's clock (Envoy would take it and refuse every leaf of its
// issuer) is not installed; the agent keeps, and acks, the one it holds.
func TestBundleWithACRLOutOfTimeIsKept(t *testing.T) {
	e := startPush(t, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 1, Roots: rawCerts(e.cas[0].Roots()...)}
	})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 1})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issuer := &x509.Certificate{SerialNumber: big.NewInt(1), SubjectKeyId: []byte{1}, KeyUsage: x509.KeyUsageCRLSign}
	now := e.clock.Now()
	for i, tc := range []struct{ this, next time.Time }{
		{now.Add(time.Minute), now.Add(time.Hour)},   // ahead of this host's clock
		{now.Add(-time.Hour), now.Add(-time.Minute)}, // expired
	} {
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(int64(i)), ThisUpdate: tc.this, NextUpdate: tc.next}, issuer, key)
		if err != nil {
			t.Fatal(err)
		}
		e.cp.push(&cav1.TrustBundle{Sequence: uint64(2 + i), Roots: rawCerts(e.cas[0].Roots()...), Crls: [][]byte{der}})
		waitLog(t, e, []string{"is ahead of this host's clock", "expired at"}[i])
		if held, _ := e.a.BundleSequence(); held != 1 {
			t.Errorf("case %d: the agent holds bundle %d, want 1", i, held)
		}
	}
	// A valid one goes in.
	e.cp.push(&cav1.TrustBundle{Sequence: 4, Roots: rawCerts(e.cas[0].Roots()...), Crls: [][]byte{signedCRL(t, e, 0, 4)}})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 4})
}

// TestOlderBundleIsNotAcked: an agent that holds bundle 6 and watches a
// replica that sends older ones (its stored state restored from a
// backup, or lagging) does not install them, and does not ack them
// either: the replica must see its proxy as behind, not as holding
// bundles and CRLs it never installed. Once the replica sends a bundle
// the agent takes, the ack says so.
func TestOlderBundleIsNotAcked(t *testing.T) {
	e := startPush(t, func(e *pushEnv) *cav1.TrustBundle {
		return &cav1.TrustBundle{Sequence: 6, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw}
	})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 6})
	first, _ := waitWait(t, e, 0, "the first renewal", func(d time.Duration) bool { return d > time.Hour })

	// The replica goes back to sequence 4; the renewal opens a new stream
	// to it, which starts with 4.
	e.cp.push(&cav1.TrustBundle{Sequence: 4, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw})
	e.clock.Advance(first)
	waitSigned(t, e, 2)
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 0, ProxySequence: 0})
	e.cp.mu.Lock()
	from := len(e.cp.acks)
	e.cp.mu.Unlock()
	// It revokes something at 5: the agent holds 6, so 5 is not taken.
	e.cp.push(&cav1.TrustBundle{Sequence: 5, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw,
		Crls: [][]byte{signedCRL(t, e, 0, 5)}})
	waitLog(t, e, "sequence=5 held=6")
	// And then moves past what the agent holds.
	e.cp.push(&cav1.TrustBundle{Sequence: 7, Roots: rawCerts(append(e.cas[0].Roots(), e.cas[1].Roots()...)...), SigningCa: e.signing[0].Raw})
	e.cp.waitAck(t, &cav1.TrustBundleAck{Sequence: 7})
	e.cp.mu.Lock()
	defer e.cp.mu.Unlock()
	for _, a := range e.cp.acks[from:] {
		if a.GetSequence() == 4 || a.GetSequence() == 5 || a.GetProxySequence() == 4 || a.GetProxySequence() == 5 {
			t.Errorf("ack %v: the agent acknowledged a bundle older than the 6 it holds, which it never installed", a)
		}
	}
	if agentSeq, _ := e.a.BundleSequence(); agentSeq != 7 {
		t.Errorf("agent holds %d, want 7", agentSeq)
	}
}
