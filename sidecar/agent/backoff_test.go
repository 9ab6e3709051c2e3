package agent

import (
	"context"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// exhausted is the CA's rate-limit refusal: ResourceExhausted with a
// RetryInfo.
func exhausted(retry time.Duration) error {
	st, err := status.New(codes.ResourceExhausted, "issuing at its limit").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func TestBackoffIsExponentialWithJitterAndHonoursTheHint(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "down")
	st, err := status.New(codes.Unavailable, "down").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	unavailableWithHint := st.Err()
	for _, tc := range []struct {
		name  string
		r     float64
		errs  []error
		limit time.Duration
		want  []time.Duration
	}{
		{"no jitter drawn: the whole step, doubling to the cap", 0.999999, []error{unavailable, unavailable, unavailable, unavailable, unavailable, unavailable, unavailable},
			5 * time.Second, []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 5 * time.Second, 5 * time.Second}},
		{"most jitter drawn: half the step", 0, []error{unavailable, unavailable, unavailable},
			5 * time.Second, []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}},
		{"a hint is a floor, plus up to a tenth", 0.5, []error{exhausted(3 * time.Second), exhausted(3 * time.Second), unavailable},
			5 * time.Second, []time.Duration{3150 * time.Millisecond, 3150 * time.Millisecond, 600 * time.Millisecond}},
		{"a hint shorter than the backoff changes nothing", 0.999999, []error{unavailable, unavailable, exhausted(time.Millisecond)},
			5 * time.Second, []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}},
		{"a hint over the limit still holds", 0, []error{exhausted(30 * time.Second)},
			time.Second, []time.Duration{30 * time.Second}},
		{"a hint is capped", 0, []error{exhausted(24 * time.Hour)},
			5 * time.Second, []time.Duration{maxHint}},
		{"RetryInfo on another code is not a hint", 0, []error{unavailableWithHint},
			5 * time.Second, []time.Duration{100 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := backoff{base: 200 * time.Millisecond, rand: func() float64 { return tc.r }}
			for i, err := range tc.errs {
				if got := b.wait(err, tc.limit); got.Round(time.Millisecond) != tc.want[i] {
					t.Errorf("wait %d = %s, want %s", i+1, got, tc.want[i])
				}
			}
			b.reset()
			if got := b.wait(unavailable, tc.limit); got > 200*time.Millisecond {
				t.Errorf("after reset: %s, want at most the base", got)
			}
		})
	}
}

// fakeClock's After fires at once and moves the clock by what was asked,
// recording each wait: the agent runs through hours of waiting in no
// time, and the test reads what it waited.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// scriptedCA answers each SignCertificate with the next of its answers
// (nil: sign), and once they run out calls done and refuses.
type scriptedCA struct {
	cav1.UnimplementedCertificateServiceServer
	ca      *ca.CA
	id      spiffeid.ID
	mu      sync.Mutex
	answers []error
	done    func()
	// creds records, per call, the authorization metadata it carried
	// ("" for a call that presented a certificate instead).
	creds []string
}

// WatchTrustBundle holds the stream open and sends nothing: this test is
// about renewals, whose waits are all the fake clock should see.
func (s *scriptedCA) WatchTrustBundle(stream cav1.CertificateService_WatchTrustBundleServer) error {
	<-stream.Context().Done()
	return nil
}

func (s *scriptedCA) SignCertificate(ctx context.Context, req *cav1.SignCertificateRequest) (*cav1.SignCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.creds = append(s.creds, strings.Join(md.Get(contract.AuthorizationKey), ","))
	if len(s.answers) == 0 {
		s.mu.Unlock()
		s.done()
		return nil, status.Error(codes.Unavailable, "script over")
	}
	answer := s.answers[0]
	s.answers = s.answers[1:]
	s.mu.Unlock()
	if answer != nil {
		return nil, answer
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, err
	}
	chain, err := s.ca.SignSVID(csr.PublicKey, s.id, 0)
	if err != nil {
		return nil, err
	}
	resp := &cav1.SignCertificateResponse{SpiffeId: s.id.String()}
	for _, c := range chain {
		resp.CertChain = append(resp.CertChain, c.Raw)
	}
	for _, r := range s.ca.Roots() {
		resp.TrustBundle = append(resp.TrustBundle, r.Raw)
	}
	return resp, nil
}

// serveScript serves script as the CA service on loopback, with a CA
// made for the test (script.ca) signing as spiffe://cluster.local/ns/
// demo/sa/frontend (script.id), until the script runs out: then the
// returned context ends. It returns that context, the address, the CA
// and the control plane's ID the server presents.
func serveScript(t *testing.T, script *scriptedCA) (context.Context, string, *ca.CA, spiffeid.ID) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	authority, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cpID := contract.ControlPlaneID(td)
	own, err := authority.NewSource(ctx, cpID, time.Hour, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	script.ca, script.id, script.done = authority, spiffeid.RequireFromPath(td, "/ns/demo/sa/frontend"), cancel
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, own, td))))
	cav1.RegisterCertificateServiceServer(g, script)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return ctx, lis.Addr().String(), authority, cpID
}

// runScript runs an agent with cfg until the scripted CA it talks to has
// run out of answers (ctx, from serveScript, ends), failing t if that
// takes 30 s of real time or the agent fails. It returns the agent.
func runScript(t *testing.T, ctx context.Context, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not get through the script in 30s of real time")
	}
	return a
}

// TestAgentBacksOffWhenTheCAIsAtItsLimit: refused with a retry hint, the
// agent comes back no earlier than the hint, for its first certificate
// and for a renewal; without a hint it backs off exponentially.
func TestAgentBacksOffWhenTheCAIsAtItsLimit(t *testing.T) {
	script := &scriptedCA{answers: []error{
		exhausted(3 * time.Second), exhausted(3 * time.Second), status.Error(codes.Unavailable, "restarting"), nil, // the first certificate
		exhausted(30 * time.Second), exhausted(30 * time.Second), nil, // a renewal
	}}
	ctx, addr, authority, cpID := serveScript(t, script)

	sock, err := os.MkdirTemp("", "bwag-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sock)
	start := time.Now()
	clock := &fakeClock{now: start}
	a := runScript(t, ctx, Config{Workload: "demo/frontend-1", ControlPlane: addr, ControlPlaneID: cpID,
		TrustBundle: authority.Roots(), JoinToken: "bwjt_test", SDSSocket: filepath.Join(sock, "sds.sock"),
		Logger: testlog.New(t), Now: clock.Now, After: clock.After})

	clock.mu.Lock()
	waits := clock.waits
	clock.mu.Unlock()
	if len(waits) < 7 {
		t.Fatalf("waits %v: want at least 7 (3 retries, a renewal wait, 2 retries, the next renewal wait)", waits)
	}
	between := func(i int, lo, hi time.Duration, what string) {
		if waits[i] < lo || waits[i] > hi {
			t.Errorf("wait %d (%s) = %s, want %s to %s", i+1, what, waits[i], lo, hi)
		}
	}
	between(0, 3*time.Second, 3300*time.Millisecond, "first certificate, refused with a 3s hint")
	between(1, 3*time.Second, 3300*time.Millisecond, "first certificate, refused with a 3s hint again")
	between(2, 400*time.Millisecond, 800*time.Millisecond, "first certificate, unavailable: the third step of 200ms doubling")
	// The first certificate is valid 24h from the CA's (real) clock; on
	// the agent's, the retries before it have already used some of that.
	life := 24*time.Hour - waits[0] - waits[1] - waits[2]
	between(3, life*4/10-time.Second, (24*time.Hour+time.Minute)*6/10, "renewal at 40-60% of the first certificate's life")
	between(4, 30*time.Second, 33*time.Second, "renewal, refused with a 30s hint")
	between(5, 30*time.Second, 33*time.Second, "renewal, refused with a 30s hint again")
	// The renewed certificate came from the CA's real clock, which the
	// agent's fake one is hours ahead of: its next renewal is at 40-60%
	// of what is left of it on the agent's clock, the backoff over.
	svid := a.SVID()
	if svid == nil {
		t.Fatal("the agent has no certificate")
	}
	at := start
	for _, w := range waits[:6] {
		at = at.Add(w)
	}
	left := svid.Certificates[0].NotAfter.Sub(at)
	between(6, left*4/10-time.Second, left*6/10+time.Second, "next renewal at 40-60% of what is left: the backoff is over")
}
