package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
)

// startControlPlane runs a control plane on a new CA directory and
// returns it with the directory.
func startControlPlane(t *testing.T) (*controlplane.ControlPlane, string) {
	t.Helper()
	dir := t.TempDir()
	if code, _, errOut := runCLI(t, "ca", "init", "--dir", dir); code != 0 {
		t.Fatalf("ca init: %s", errOut)
	}
	cp, err := controlplane.Start(context.Background(), controlplane.Config{MeshPaths: []string{"../../examples/local/mesh.yaml"},
		XDSAddress: "127.0.0.1:0", CADir: dir, Logger: testlog.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	return cp, dir
}

func loadState(t *testing.T, dir string) *trust.State {
	t.Helper()
	st, err := trust.NewDirStore(dir, spiffeid.TrustDomain{}).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestCACommandsDriveTheLifecycle: status, prepare, a refused and a
// forced step, revoke, and a rotation followed with --wait to its end,
// as an operator types them.
func TestCACommandsDriveTheLifecycle(t *testing.T) {
	cp, dir := startControlPlane(t)
	sock := []string{"--socket", cp.AdminAddr}
	first := loadState(t, dir).Active().ID

	code, out, errOut := runCLI(t, append([]string{"ca", "status"}, sock...)...)
	if code != 0 {
		t.Fatalf("ca status: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"Trust domain cluster.local, bundle sequence 1\n",
		"Authorities:\n",
		"ID            PHASE   ROOT                           ROOT EXPIRES        SIGNING",
		"  Bulwark intermediate CA cluster.local  " + time.Now().Add(ca.DefaultIntermediateTTL).UTC().Format("2006-01-02") + " (729d)",
		first + "  active  Bulwark root CA cluster.local  " + time.Now().Add(ca.DefaultRootTTL).UTC().Format("2006-01-02") + " (3649d)",
		"  init    0\n",
		" init " + first + " by uid ",
		"Proxies: 0 connected\n",
		"Rotation: none in progress\n",
		"Revocations: none\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ca status lacks %q:\n%s", want, out)
		}
	}

	code, out, errOut = runCLI(t, append([]string{"ca", "prepare", "--kind", "root", "--as", "alice"}, sock...)...)
	if code != 0 {
		t.Fatalf("ca prepare: exit %d: %s", code, errOut)
	}
	next := regexp.MustCompile(`authority ([0-9a-f]{12}) prepared`).FindStringSubmatch(out)
	if next == nil || !strings.Contains(out, `prepare `) || !strings.Contains(out, `as \"alice\"`) && !strings.Contains(out, `as "alice"`) {
		t.Fatalf("ca prepare output:\n%s", out)
	}

	// Removing the active one is refused, saying why.
	code, _, errOut = runCLI(t, append([]string{"ca", "remove", first}, sock...)...)
	if code != 1 || !strings.Contains(errOut, "remove") || !strings.Contains(errOut, first) {
		t.Errorf("ca remove of the active one: exit %d, stderr %q", code, errOut)
	}

	// Revoke without a reason is a usage error; with one, it is recorded.
	if code, _, _ := runCLI(t, append([]string{"ca", "revoke", "--workload", "demo/db-1"}, sock...)...); code != 2 {
		t.Errorf("ca revoke without --reason: exit %d, want 2", code)
	}
	code, out, errOut = runCLI(t, append([]string{"ca", "revoke", "--workload", "demo/db-1", "--reason", "key leaked"}, sock...)...)
	if code != 0 || !strings.Contains(out, "workload demo/db-1 revoked") {
		t.Errorf("ca revoke: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// Rotate (to the prepared root: a plain rotate takes the newest
	// prepared authority), following it: every step is printed and it
	// ends (nothing is connected, so no gate waits).
	code, out, errOut = runCLI(t, append([]string{"ca", "rotate", "--wait"}, sock...)...)
	if code != 0 {
		t.Fatalf("ca rotate --wait: exit %d: %s\n%s", code, errOut, out)
	}
	for _, want := range []string{"root rotation of " + first + " to " + next[1] + " started", "step remove", "step confirm", "rotation done: " + first + " replaced"} {
		if !strings.Contains(out, want) {
			t.Errorf("ca rotate --wait lacks %q:\n%s", want, out)
		}
	}
	st := loadState(t, dir)
	if st.Active().ID != next[1] || st.Get(first).Phase != trust.Removed {
		t.Errorf("after the rotation: active %s, %s %s", st.Active().ID, first, st.Get(first).Phase)
	}

	// The status as JSON, and read offline from the directory.
	code, out, errOut = runCLI(t, append([]string{"ca", "status", "--json"}, sock...)...)
	var js map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil || js["trust_domain"] != "cluster.local" {
		t.Errorf("ca status --json: exit %d, %s, stdout:\n%s", code, errOut, out)
	}
	code, out, errOut = runCLI(t, "ca", "status", "--dir", dir)
	if code != 0 || !strings.Contains(out, "(read from the CA directory: nothing is known of proxies)") || !strings.Contains(out, next[1]+"  active") ||
		!strings.Contains(out, "workload demo/db-1: 0 serials") {
		t.Errorf("ca status --dir: exit %d, %s, stdout:\n%s", code, errOut, out)
	}
}

// TestCACommandsWithoutAControlPlane: a socket that is not there is
// named, with what to do.
func TestCACommandsWithoutAControlPlane(t *testing.T) {
	code, _, errOut := runCLI(t, "ca", "status", "--socket", t.TempDir()+"/admin.sock")
	if code != 1 || !strings.Contains(errOut, "admin.sock") || !strings.Contains(errOut, "is the control plane running") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}

	// A socket file left by a control plane that died: the call waits
	// --timeout for one to serve it, then says none does.
	stale := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	code, _, errOut = runCLI(t, "ca", "status", "--socket", stale, "--timeout", "300ms")
	if code != 1 || !strings.Contains(errOut, "does not answer on its admin socket") {
		t.Errorf("stale socket: exit %d, stderr %q", code, errOut)
	}
}

// TestCAPrepareNamesTheBadFile: a hand-in whose certificate or key does
// not parse is refused naming the flag and the file, before anything is
// sent.
func TestCAPrepareNamesTheBadFile(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "next-int.pem")
	if err := os.WriteFile(junk, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "admin.sock")
	code, _, errOut := runCLI(t, "ca", "prepare", "--cert", junk, "--key", junk, "--socket", socket)
	if code != 1 || !strings.Contains(errOut, "--cert "+junk) {
		t.Errorf("bad certificate: exit %d, stderr %q, want it to name --cert %s", code, errOut, junk)
	}
}
