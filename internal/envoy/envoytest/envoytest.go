// Package envoytest gives tests the real Envoy binary. A test that needs
// Envoy fails, never skips, when it is missing: `make test` installs it.
// The unit tier (go test -short) leaves these tests out by design.
package envoytest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/testtier"
)

// Bin returns the Envoy binary or fails the test. Under -short it skips
// the test instead, found or not: the unit tier runs no Envoy.
func Bin(t testing.TB) string {
	t.Helper()
	testtier.Needs(t, testtier.Envoy)
	bin, err := envoy.Find()
	if err != nil {
		t.Fatalf("this test runs the real Envoy: %v", err)
	}
	return bin
}

// Validate runs `envoy --mode validate` on a bootstrap and fails the test
// with Envoy's output if Envoy rejects it. Under -short it skips the test
// (see Bin); call it after the test's own checks, which then still run.
func Validate(t testing.TB, bootstrapYAML []byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bootstrap.yaml")
	if err := os.WriteFile(p, bootstrapYAML, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, Bin(t), "--mode", "validate", "-c", p, "--disable-hot-restart", "--log-level", "warning").CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate rejected the bootstrap: %v\n%s\n--- bootstrap ---\n%s", err, out, bootstrapYAML)
	}
}
