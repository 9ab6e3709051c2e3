package agent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// TestRenewalRefusedAttestsAgainWithTheServiceAccountToken: when the
// control plane no longer takes the agent's certificate as a credential
// (its authority was revoked), an agent with a ServiceAccount token file
// proves its identity again with the token, at once, instead of retrying
// the refused certificate until it expires.
func TestRenewalRefusedAttestsAgainWithTheServiceAccountToken(t *testing.T) {
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
	defer cancel()
	cpID := contract.ControlPlaneID(td)
	own, err := authority.NewSource(ctx, cpID, time.Hour, testlog.New(t))
	if err != nil {
		t.Fatal(err)
	}
	script := &scriptedCA{ca: authority, id: spiffeid.RequireFromPath(td, "/ns/demo/sa/frontend"), done: cancel, answers: []error{
		nil, // the first certificate, with the token
		status.Error(codes.PermissionDenied, "certificate 1f is no credential any more: authority 3a revoked"),
		nil, // the same renewal, with the token
	}}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, own, td))))
	cav1.RegisterCertificateServiceServer(g, script)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()

	sock, err := os.MkdirTemp("", "bwag-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sock)
	tokenFile := filepath.Join(sock, "token")
	if err := os.WriteFile(tokenFile, []byte("sa-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Now()}
	a, err := New(Config{Workload: "demo/frontend-1", ControlPlane: lis.Addr().String(), ControlPlaneID: cpID,
		TrustBundle: authority.Roots(), ServiceAccountTokenFile: tokenFile, SDSSocket: filepath.Join(sock, "sds.sock"),
		Logger: testlog.New(t), Now: clock.Now, After: clock.After})
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
	script.mu.Lock()
	creds := script.creds
	script.mu.Unlock()
	token := contract.ServiceAccountTokenScheme + " sa-token"
	if len(creds) < 3 || creds[0] != token || creds[1] != "" || creds[2] != token {
		t.Fatalf("credentials per call %q: want the token, then the certificate (refused), then the token again", creds)
	}
}
