package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCAInitIssueAndRefusalToOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if code, _, errOut := runCLI(t, "ca", "init", "--dir", dir, "--trust-domain", "example.org"); code != 0 {
		t.Fatalf("ca init: %s", errOut)
	}
	root, err := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCLI(t, "ca", "init", "--dir", dir, "--trust-domain", "example.org")
	if code != 1 || !strings.Contains(errOut, "already exists") {
		t.Errorf("second ca init: exit %d, %s", code, errOut)
	}
	if again, _ := os.ReadFile(filepath.Join(dir, "root-cert.pem")); string(again) != string(root) {
		t.Fatal("the root changed")
	}

	out := filepath.Join(t.TempDir(), "gw")
	code, stdout, errOut := runCLI(t, "ca", "issue", "--dir", dir, "--id", "spiffe://example.org/ns/edge/sa/gateway", "--out", out, "--ttl", "1h")
	if code != 0 {
		t.Fatalf("ca issue: %s", errOut)
	}
	if !strings.Contains(stdout, "issued spiffe://example.org/ns/edge/sa/gateway") {
		t.Errorf("stdout: %s", stdout)
	}
	for _, f := range []string{"cert.pem", "key.pem", "bundle.pem"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if st, _ := os.Stat(filepath.Join(out, "key.pem")); st != nil && st.Mode().Perm() != 0o600 {
		t.Errorf("key.pem mode %v, want 0600", st.Mode().Perm())
	}
	// cert.pem carries the chain: openssl verifies it against the bundle.
	cmd := exec.Command("openssl", "verify", "-CAfile", filepath.Join(out, "bundle.pem"), "-untrusted", filepath.Join(out, "cert.pem"), filepath.Join(out, "cert.pem"))
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "OK") {
		t.Errorf("openssl verify: %v: %s", err, b)
	}

	code, _, errOut = runCLI(t, "ca", "issue", "--dir", dir, "--id", "spiffe://evil.org/ns/edge/sa/gateway", "--out", out)
	if code != 1 {
		t.Errorf("issuing for another trust domain: exit %d, %s", code, errOut)
	}
}

func TestServeRefusesAMissingCA(t *testing.T) {
	code, _, errOut := runCLI(t, "serve", "--mesh", exampleMesh, "--ca-dir", filepath.Join(t.TempDir(), "none"), "--xds-address", "127.0.0.1:0", "--http-address", "")
	if code != 1 || !strings.Contains(errOut, "no CA material") || !strings.Contains(errOut, "bulwark ca init") {
		t.Errorf("exit %d, %s", code, errOut)
	}
}

func TestTokenCreate(t *testing.T) {
	dir := t.TempDir()
	code, stdout, errOut := runCLI(t, "token", "create", "--ca-dir", dir, "--workload", "demo/api-1", "--ttl", "10m")
	if code != 0 || !strings.HasPrefix(stdout, "bwjt_") || !strings.Contains(errOut, "usable once") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, errOut)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "tokens"))
	if len(entries) != 1 {
		t.Errorf("%d token records, want 1", len(entries))
	}
}

func TestMTLSExceptions(t *testing.T) {
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	body := `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: m}
spec:
  services: [{name: legacy, namespace: prod, ports: [{name: http, port: 8080, protocol: http}, {name: metrics, port: 9090, protocol: tcp}]}]
  workloads: [{name: legacy-1, namespace: prod, address: 10.0.0.1, services: [legacy]}]
---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: scrape, namespace: prod}
spec:
  portModes: {"9090": DISABLE}
  exception: {reason: "scraper without a sidecar", owner: team-obs, expires: "2027-03-01"}
`
	if err := os.WriteFile(mesh, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "mtls", "exceptions", "--mesh", mesh, "--at", "2026-12-01")
	if code != 0 {
		t.Fatal(errOut)
	}
	for _, want := range []string{"prod/legacy-1", "9090", "DISABLE", "MTLSPolicy prod/scrape", "scraper without a sidecar", "team-obs", "2027-03-01", "active"} {
		if !strings.Contains(out, want) {
			t.Errorf("listing lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, " 8080 ") {
		t.Errorf("STRICT port 8080 listed:\n%s", out)
	}
	_, out, _ = runCLI(t, "mtls", "exceptions", "--mesh", mesh, "--at", "2027-03-02")
	if !strings.Contains(out, "EXPIRED: enforced as STRICT") {
		t.Errorf("after the expiry date:\n%s", out)
	}
	_, out, _ = runCLI(t, "mtls", "exceptions", "--mesh", exampleMesh)
	if !strings.Contains(out, "no exceptions") {
		t.Errorf("the example mesh should be STRICT everywhere:\n%s", out)
	}
}

func TestIPTablesPrint(t *testing.T) {
	code, out, errOut := runCLI(t, "iptables", "--print", "--exclude-inbound-ports", "15021", "--exclude-outbound-cidrs", "10.0.0.1/32")
	if code != 0 {
		t.Fatal(errOut)
	}
	for _, want := range []string{"--to-ports 15006", "--to-ports 15001", "--gid-owner 1337", "--dport 15021 -j RETURN", "-d 10.0.0.1/32 -j RETURN"} {
		if !strings.Contains(out, want) {
			t.Errorf("rules lack %q:\n%s", want, out)
		}
	}
}
