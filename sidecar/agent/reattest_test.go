package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// TestRenewalRefusedAttestsAgainWithTheServiceAccountToken: when the
// control plane no longer takes the agent's certificate as a credential
// (its authority was revoked), an agent with a ServiceAccount token file
// proves its identity again with the token, at once, instead of retrying
// the refused certificate until it expires.
func TestRenewalRefusedAttestsAgainWithTheServiceAccountToken(t *testing.T) {
	script := &scriptedCA{answers: []error{
		nil, // the first certificate, with the token
		status.Error(codes.PermissionDenied, "certificate 1f is no credential any more: authority 3a revoked"),
		nil, // the same renewal, with the token
	}}
	ctx, addr, authority, cpID := serveScript(t, script)

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
	runScript(t, ctx, Config{Workload: "demo/frontend-1", ControlPlane: addr, ControlPlaneID: cpID,
		TrustBundle: authority.Roots(), ServiceAccountTokenFile: tokenFile, SDSSocket: filepath.Join(sock, "sds.sock"),
		Logger: testlog.New(t), Now: clock.Now, After: clock.After})
	script.mu.Lock()
	creds := script.creds
	script.mu.Unlock()
	token := contract.ServiceAccountTokenScheme + " sa-token"
	if len(creds) < 3 || creds[0] != token || creds[1] != "" || creds[2] != token {
		t.Fatalf("credentials per call %q: want the token, then the certificate (refused), then the token again", creds)
	}
}
