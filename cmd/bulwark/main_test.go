package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

const exampleMesh = "../../examples/local/mesh.yaml"

func TestBootstrapCommandPrintsWhatEnvoyAccepts(t *testing.T) {
	code, out, errOut := runCLI(t, "bootstrap", "--mesh", exampleMesh, "--workload", "demo/frontend-1", "--sds-socket", "/run/bw/sds.sock")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"id: demo/frontend-1", "address: 127.0.2.1", "portValue: 15000", "clusterName: bulwark-xds",
		"path: /run/bw/sds.sock", "exact: spiffe://cluster.local/ns/bulwark-system/sa/bulwark"} {
		if !strings.Contains(out, want) {
			t.Errorf("bootstrap lacks %q:\n%s", want, out)
		}
	}
	envoytest.Validate(t, []byte(out))
}

func TestBootstrapCommandRefusesUnknownWorkload(t *testing.T) {
	code, _, errOut := runCLI(t, "bootstrap", "--mesh", exampleMesh, "--workload", "demo/nobody")
	if code != 1 || !strings.Contains(errOut, "workload demo/nobody is not in") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "bootstrap", "--workload", "nobody")
	if code != 2 || !strings.Contains(errOut, "want namespace/name") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

// TestBootstrapCommandRefusesABadTrustDomain: the default control plane
// ID is built from --trust-domain, so a name that is no trust domain is
// an error, not a bootstrap that trusts no control plane.
func TestBootstrapCommandRefusesABadTrustDomain(t *testing.T) {
	code, out, errOut := runCLI(t, "bootstrap", "--workload", "demo/frontend-1", "--trust-domain", "Not A Domain")
	if code != 1 || !strings.Contains(errOut, "--trust-domain") || out != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = runCLI(t, "bootstrap", "--workload", "demo/frontend-1", "--trust-domain", "prod.example.org")
	if code != 0 || !strings.Contains(out, "exact: spiffe://prod.example.org/ns/bulwark-system/sa/bulwark") {
		t.Errorf("exit %d, stderr %q, bootstrap:\n%s", code, errOut, out)
	}
}

func TestValidateCommand(t *testing.T) {
	code, out, errOut := runCLI(t, "validate", exampleMesh)
	if code != 0 || !strings.Contains(out, `ok: mesh "local"`) {
		t.Fatalf("example mesh: exit %d, %s%s", code, out, errOut)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	data, err := os.ReadFile(exampleMesh)
	if err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(string(data), "address: 127.0.1.2\n", "address: 127.0.1.2\n      colour: blue\n", 1)
	broken = strings.Replace(broken, "{service: db, localPort: 15432}", "{service: dbb, localPort: 15432}", 1)
	if err := os.WriteFile(bad, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCLI(t, "validate", bad)
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	lineOf := func(s string) int { return strings.Count(broken[:strings.Index(broken, s)], "\n") + 1 }
	for _, want := range []string{
		fmt.Sprintf(`%s:%d: Mesh local: spec.workloads[1].colour: unknown field "colour"`, bad, lineOf("colour")),
		fmt.Sprintf(`%s:%d: Mesh local: spec.workloads[1].upstreams[0].service: service "dbb" is not defined in namespace demo`, bad, lineOf("dbb")),
		"2 problem(s)",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	code, _, errOut := runCLI(t, "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
