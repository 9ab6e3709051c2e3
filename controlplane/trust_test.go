package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testtier"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

const cdsType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

// newCADir is a CA directory as `bulwark ca init` makes it.
func newCADir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: meshTD}); err != nil {
		t.Fatal(err)
	}
	if err := controlplane.InitRoster(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startOn starts a control plane on the CA directory dir, logging to log
// (the test's log when nil).
func startOn(t *testing.T, dir string, log *slog.Logger) *controlplane.ControlPlane {
	t.Helper()
	if log == nil {
		log = testlog.New(t)
	}
	cp, err := controlplane.Start(context.Background(), controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0",
		CADir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	return cp
}

// adminClient talks to cp's admin socket as this process's user.
func adminClient(t *testing.T, cp *controlplane.ControlPlane) cav1.TrustAdminClient {
	t.Helper()
	if cp.AdminAddr == "" {
		t.Fatal("the control plane serves no admin socket")
	}
	c, conn, err := controlplane.DialAdmin(cp.AdminAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func load(t *testing.T, dir string) *trust.State {
	t.Helper()
	st, err := trust.NewDirStore(dir, meshTD).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// workloadTLS gets workload a certificate from cp (join token, as an
// agent's first request) and returns the client TLS configuration an
// Envoy of that workload would use towards the control plane.
func workloadTLS(t *testing.T, cp *controlplane.ControlPlane, workload string) *tls.Config {
	t.Helper()
	tok, err := cp.Tokens.Create(workload, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	first := spiffetls.ClientConfig(nil, x509bundle.FromX509Authorities(meshTD, cp.CA.Roots()), cp.Identity)
	tc, _, err := requestCert(t, cp, first, workload, tok)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// connectProxy opens an ADS stream as workload, as its Envoy would, and
// waits until the control plane counts it as connected. Its agent
// reports no bundle: for the gates it holds none.
func connectProxy(t *testing.T, cp *controlplane.ControlPlane, workload string) *adstest.Client {
	t.Helper()
	c := adstest.Dial(t, cp.XDSAddr.String(), workload, workloadTLS(t, cp, workload))
	c.Subscribe(cdsType)
	c.Recv(cdsType, 10*time.Second)
	testwait.Until(t, workload+" connected", 10*time.Second, func() bool {
		for _, p := range cp.Proxies() {
			if p.Workload == workload {
				return true
			}
		}
		return false
	})
	return c
}

// servingIssuer returns the ID of the authority that signed the
// certificate the control plane serves now.
func servingIssuer(t *testing.T, cp *controlplane.ControlPlane, st *trust.State) string {
	t.Helper()
	c, err := tls.Dial("tcp", cp.XDSAddr.String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return st.IssuerOf(c.ConnectionState().PeerCertificates[0])
}

// TestTrustStateReloadsAndKeepsTheLastGood: a change of the stored state
// (another process saving it) reaches the control plane within seconds;
// a state file that no longer loads is logged with its path, and the last
// good state stays in use.
func TestTrustStateReloadsAndKeepsTheLastGood(t *testing.T) {
	dir := newCADir(t)
	log, lines := testlog.Capture()
	cp := startOn(t, dir, log)
	if n := len(cp.CA.Roots()); n != 1 {
		t.Fatalf("%d roots at start, want 1", n)
	}

	// Another writer prepares a new root.
	store := trust.NewDirStore(dir, meshTD)
	st := load(t, dir)
	next, err := trust.DefaultMint(time.Hour*24*365, time.Hour*24*30, time.Now())("root", st.Active())
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Prepare(st, next, trust.Operation{Who: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := store.Save(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the prepared root in the control plane's bundle", 5*time.Second, func() bool { return len(cp.CA.Roots()) == 2 })

	// The state file breaks: the control plane keeps what it had.
	if err := os.WriteFile(store.Path(), []byte(`{"version": 1, "trustDomain": `), 0o600); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the load failure logged", 5*time.Second, func() bool {
		return strings.Contains(lines.String(), "the stored trust state cannot be used") && strings.Contains(lines.String(), store.Path())
	})
	if n := len(cp.CA.Roots()); n != 2 {
		t.Errorf("%d roots after a broken state file, want the last good 2", n)
	}
	signWithJoinToken(t, cp, cp.CA.Roots(), "demo/api-1") // still signs
	st2, err := adminClient(t, cp).Status(ctx10(t), &cav1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st2.GetWarnings()) == 0 || !strings.Contains(strings.Join(st2.GetWarnings(), "\n"), "cannot be used") {
		t.Errorf("status warnings %q do not say the stored state cannot be used", st2.GetWarnings())
	}
}

// TestServingCertificateFollowsActivation: once another authority is
// active, the control plane's own certificate is re-issued by it at once
// (not at half life), so the old one can be removed without cutting
// agents off.
func TestServingCertificateFollowsActivation(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	old := load(t, dir).Active().ID
	if got := servingIssuer(t, cp, load(t, dir)); got != old {
		t.Fatalf("serving certificate signed by %q, want the active %s", got, old)
	}
	prep, err := admin.Prepare(ctx10(t), &cav1.PrepareRequest{Kind: "root"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Activate(ctx10(t), &cav1.AuthorityRequest{Id: prep.GetAuthority()}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the serving certificate signed by "+prep.GetAuthority(), 5*time.Second, func() bool {
		return servingIssuer(t, cp, load(t, dir)) == prep.GetAuthority()
	})
	// And a workload trusting only the new root reaches it.
	signWithJoinToken(t, cp, []*x509.Certificate{load(t, dir).Get(prep.GetAuthority()).Root}, "demo/api-1")
}

// TestAdminSocketIsTheOwnersOnly: the socket is mode 0600, and a process
// of another user is closed on even when the file's mode would let it in.
func TestAdminSocketIsTheOwnersOnly(t *testing.T) {
	dir := newCADir(t)
	log, lines := testlog.Capture()
	cp := startOn(t, dir, log)
	fi, err := os.Stat(cp.AdminAddr)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("admin socket mode %s, want a socket with 0600", fi.Mode())
	}
	if _, err := adminClient(t, cp).Status(ctx10(t), &cav1.StatusRequest{}); err != nil {
		t.Fatalf("the owner is refused: %v", err)
	}
	// Connecting as another user needs root: the integration tier has it
	// (make test), and there its absence is a failure, not a skip.
	testtier.Needs(t, testtier.Root)
	if os.Getuid() != 0 {
		t.Fatal("connecting to the admin socket as another user needs root; run make test as root")
	}
	// A python3 every user may run (not one under root's home);
	// scripts/install-deps.sh installs it.
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("no /usr/bin/python3 to connect as another user: %v", err)
	}
	// Let anyone reach the file, so that only the peer check stands.
	if err := os.Chmod(cp.AdminAddr, 0o666); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(cp.AdminAddr); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The client speaks first (the HTTP/2 preface); an accepted
	// connection is answered with the server's SETTINGS frame, a refused
	// one closed with nothing.
	script := `import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0,0,0,4,0,0,0,0,0]))
    s.settimeout(5)
    print(len(s.recv(100)))
except (BrokenPipeError, ConnectionResetError):
    print(0)`
	for _, tc := range []struct {
		name string
		uid  uint32
		want string
	}{
		{"root", 0, "answered"},
		{"nobody", 65534, "closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(python, "-c", script, cp.AdminAddr)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tc.uid, Gid: tc.uid}}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			got := "answered"
			if strings.TrimSpace(string(out)) == "0" {
				got = "closed"
			}
			if got != tc.want {
				t.Errorf("uid %d: the connection was %s, want %s", tc.uid, got, tc.want)
			}
		})
	}
	if !strings.Contains(lines.String(), "admin connection refused") || !strings.Contains(lines.String(), "uid 65534") {
		t.Errorf("the refusal is not logged with the peer's uid:\n%s", lines)
	}
}

// TestAdminCalls: each call of the admin service, its happy path and a
// refusal, with the event recorded under the caller's user.
func TestAdminCalls(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	ctx := ctx10(t)
	first := load(t, dir).Active().ID
	code := func(err error) codes.Code { return status.Code(err) }

	// Status.
	st, err := admin.Status(ctx, &cav1.StatusRequest{})
	if err != nil || len(st.GetAuthorities()) != 1 || st.GetAuthorities()[0].GetId() != first || st.GetAuthorities()[0].GetPhase() != "active" {
		t.Fatalf("status: %v, %v", st, err)
	}

	// Prepare: a bad kind is refused; an intermediate is minted.
	if _, err := admin.Prepare(ctx, &cav1.PrepareRequest{Kind: "leaf"}); code(err) != codes.InvalidArgument {
		t.Errorf("prepare kind leaf: %v, want InvalidArgument", err)
	}
	prep, err := admin.Prepare(ctx, &cav1.PrepareRequest{Kind: "intermediate", Operator: &cav1.Operator{As: "alice"}})
	if err != nil {
		t.Fatal(err)
	}
	next := prep.GetAuthority()
	if len(prep.GetEvents()) != 1 || prep.GetEvents()[0].GetAction() != "prepare" || !strings.Contains(prep.GetEvents()[0].GetWho(), `uid `) ||
		!strings.Contains(prep.GetEvents()[0].GetWho(), `"alice"`) {
		t.Errorf("prepare events %v: want one prepare by this uid as alice", prep.GetEvents())
	}

	// Activate: a connected proxy that holds no bundle holds it up, and
	// the refusal names it; forced, it goes through and says what it broke.
	proxy := connectProxy(t, cp, "demo/api-1")
	_, err = admin.Activate(ctx, &cav1.AuthorityRequest{Id: next})
	if code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "demo/api-1") {
		t.Fatalf("activate with a lagging proxy: %v, want FailedPrecondition naming demo/api-1", err)
	}
	if g := gateRefusal(err); g == nil || g.GetStep() != "activate" || len(g.GetLaggards()) != 1 || !strings.Contains(g.GetLaggards()[0], "demo/api-1") {
		t.Errorf("refusal details %v: want the activate gate with demo/api-1", g)
	}
	act, err := admin.Activate(ctx, &cav1.AuthorityRequest{Id: next, Operator: &cav1.Operator{Force: true}})
	if err != nil {
		t.Fatal(err)
	}
	if !anyForced(act.GetEvents()) {
		t.Errorf("forced activate events %v: none is marked forced", act.GetEvents())
	}
	proxy.Close()
	testwait.Until(t, "the proxy gone", 5*time.Second, func() bool { return len(cp.Proxies()) == 0 })
	// Activating it again is illegal, forced or not.
	if _, err := admin.Activate(ctx, &cav1.AuthorityRequest{Id: next, Operator: &cav1.Operator{Force: true}}); code(err) != codes.FailedPrecondition {
		t.Errorf("activate the active one: %v, want FailedPrecondition", err)
	}

	// Retire: the active one without a successor is refused.
	if _, err := admin.Retire(ctx, &cav1.AuthorityRequest{Id: next}); code(err) != codes.FailedPrecondition {
		t.Errorf("retire the active one with no successor: %v, want FailedPrecondition", err)
	}
	// Remove: the active one is refused, an unknown one not found, the
	// retired first one removed.
	if _, err := admin.Remove(ctx, &cav1.AuthorityRequest{Id: next}); code(err) != codes.FailedPrecondition {
		t.Errorf("remove the active one: %v, want FailedPrecondition", err)
	}
	if _, err := admin.Remove(ctx, &cav1.AuthorityRequest{Id: "ffffffffffff"}); code(err) != codes.NotFound {
		t.Errorf("remove an unknown one: %v, want NotFound", err)
	}
	if _, err := admin.Remove(ctx, &cav1.AuthorityRequest{Id: first}); err != nil {
		t.Errorf("remove the retired one: %v", err)
	}
	// Retire: a prepared one is refused (it never signed: remove it);
	// the active one hands over to its prepared successor (handed in: the
	// active one's root and key make an intermediate as an organisation's
	// PKI would).
	handed := handIn(t, admin, load(t, dir))
	if _, err := admin.Retire(ctx, &cav1.AuthorityRequest{Id: handed}); code(err) != codes.FailedPrecondition {
		t.Errorf("retire a prepared one: %v, want FailedPrecondition", err)
	}
	if _, err := admin.Retire(ctx, &cav1.AuthorityRequest{Id: next}); err != nil {
		t.Fatalf("retire the active one: %v", err)
	}
	if act := load(t, dir).Active(); act == nil || act.ID != handed {
		t.Fatalf("after retiring %s the active one is %v, want its successor %s", next, act, handed)
	}
	next = handed

	// Revoke and unrevoke.
	if _, err := admin.Revoke(ctx, &cav1.RevokeRequest{Kind: "workload", Value: "demo/db-1"}); code(err) != codes.InvalidArgument {
		t.Errorf("revoke without a reason: %v, want InvalidArgument", err)
	}
	if _, err := admin.Revoke(ctx, &cav1.RevokeRequest{Kind: "workload", Value: "demo/db-1", Operator: &cav1.Operator{Reason: "key leaked"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Unrevoke(ctx, &cav1.UnrevokeRequest{Kind: "workload", Value: "demo/db-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Unrevoke(ctx, &cav1.UnrevokeRequest{Kind: "workload", Value: "demo/db-1"}); code(err) != codes.InvalidArgument {
		t.Errorf("unrevoke what is not revoked: %v, want InvalidArgument", err)
	}

	// Import a CRL the active authority signed, clear it; a CRL that is
	// garbage is refused, and shown.
	crl := signCRL(t, load(t, dir).Get(next))
	imp, err := admin.ImportCRL(ctx, &cav1.ImportCRLRequest{Crl: crl})
	if err != nil || imp.GetAuthority() != next {
		t.Fatalf("import a CRL of %s: %v, %v", next, imp, err)
	}
	if _, err := admin.ClearCRL(ctx, &cav1.ClearCRLRequest{Authority: next}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ClearCRL(ctx, &cav1.ClearCRLRequest{Authority: next}); code(err) != codes.NotFound {
		t.Errorf("clear a CRL twice: %v, want NotFound", err)
	}
	if _, err := admin.ImportCRL(ctx, &cav1.ImportCRLRequest{Crl: []byte("not a CRL")}); code(err) != codes.InvalidArgument {
		t.Errorf("import garbage: %v, want InvalidArgument", err)
	}
	st, err = admin.Status(ctx, &cav1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.GetImportedCrls()); n != 1 || st.GetImportedCrls()[0].GetProblem() == "" {
		t.Errorf("status imported CRLs %v: want the rejected one with its problem", st.GetImportedCrls())
	}

	// Rotate: starts at once; a second call attaches; with nothing
	// connected every gate passes and the rotation completes.
	rot, err := admin.Rotate(ctx, &cav1.RotateRequest{Kind: "intermediate"})
	if err != nil || rot.GetAttached() || rot.GetRotation().GetOld() != next {
		t.Fatalf("rotate: %v, %v", rot, err)
	}
	if again, err := admin.Rotate(ctx, &cav1.RotateRequest{}); err == nil && !again.GetAttached() {
		t.Errorf("a second rotate started another rotation: %v", again)
	}
	if _, err := admin.Rotate(ctx, &cav1.RotateRequest{Kind: "leaf"}); code(err) != codes.InvalidArgument {
		t.Errorf("rotate kind leaf: %v, want InvalidArgument", err)
	}
	testwait.Until(t, "the rotation done", 15*time.Second, func() bool { return load(t, dir).Rotation == nil })
	final := load(t, dir)
	if act := final.Active(); act == nil || act.ID == next {
		t.Errorf("after the rotation the active authority is %v, want a new one", act)
	}
	if a := final.Get(next); a == nil || a.Phase != trust.Removed {
		t.Errorf("after the rotation %s is %v, want removed", next, a)
	}
}

func gateRefusal(err error) *cav1.GateRefusal {
	for _, d := range status.Convert(err).Details() {
		if g, ok := d.(*cav1.GateRefusal); ok {
			return g
		}
	}
	return nil
}

func anyForced(es []*cav1.TrustEvent) bool {
	for _, e := range es {
		if e.GetForced() {
			return true
		}
	}
	return false
}

// handIn prepares, through the admin service, an intermediate made
// outside (under the active root, with its key) as an organisation's own
// PKI would hand one in.
func handIn(t *testing.T, admin cav1.TrustAdminClient, st *trust.State) string {
	t.Helper()
	act := st.Active()
	cert, key, err := trust.MintIntermediate(meshTD, act.Root, act.RootKey, 30*24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pemutil.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := admin.Prepare(ctx10(t), &cav1.PrepareRequest{CertPem: pemutil.EncodeCerts([]*x509.Certificate{cert}), KeyPem: keyPEM})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetAuthority()
}

// signCRL is a CRL a's signing certificate signed, revoking one serial.
func signCRL(t *testing.T, a *trust.Authority) []byte {
	t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(7), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(0x3f2a), RevocationTime: time.Now()}},
	}, a.Signing(), a.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestRotationResumesAfterRestart: a rotation held up by a lagging proxy
// is stored at its step; a control plane started again on the same
// directory (the proxy gone) resumes it where it was and completes it,
// minting nothing more.
func TestRotationResumesAfterRestart(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	old := load(t, dir).Active().ID
	connectProxy(t, cp, "demo/api-1")
	if _, err := adminClient(t, cp).Rotate(ctx10(t), &cav1.RotateRequest{Kind: "root"}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the rotation waiting at activate", 10*time.Second, func() bool {
		r := load(t, dir).Rotation
		return r != nil && r.Step == trust.StepActivate && r.Target != ""
	})
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	stored := load(t, dir)
	target := stored.Rotation.Target
	if n := len(stored.Authorities); n != 2 {
		t.Fatalf("%d authorities stored mid-rotation, want the old and the target", n)
	}

	// The restarted control plane knows nothing of the proxies until they
	// reconnect: it waits for the one connected before (its roster),
	// instead of taking no evidence for a mesh with no proxies.
	cp2 := startOn(t, dir, nil)
	admin2 := adminClient(t, cp2)
	for hold := time.Now().Add(2 * time.Second); time.Now().Before(hold); time.Sleep(100 * time.Millisecond) {
		if r := load(t, dir).Rotation; r == nil || r.Step != trust.StepActivate {
			t.Fatalf("the restarted control plane went on before demo/api-1 was back: rotation %+v", r)
		}
	}
	st, err := admin2.Status(ctx10(t), &cav1.StatusRequest{})
	if err != nil || !strings.Contains(strings.Join(st.GetMissing(), "\n"), "not back yet (demo/api-1)") {
		t.Errorf("status missing %q (%v): want the warm-up waiting for demo/api-1", st.GetMissing(), err)
	}
	// Back (its agent reporting nothing yet), it holds the gate itself.
	back := connectProxy(t, cp2, "demo/api-1")
	testwait.Until(t, "the warm-up over", 5*time.Second, func() bool {
		st, err := admin2.Status(ctx10(t), &cav1.StatusRequest{})
		return err == nil && len(st.GetMissing()) == 0 && st.GetRotation().GetWaiting() != ""
	})
	if r := load(t, dir).Rotation; r == nil || r.Step != trust.StepActivate {
		t.Fatalf("rotation %+v went on with demo/api-1 holding no bundle", r)
	}
	back.Close()
	testwait.Until(t, "the resumed rotation done", 15*time.Second, func() bool { return load(t, dir).Rotation == nil })
	final := load(t, dir)
	if n := len(final.Authorities); n != 2 {
		t.Errorf("%d authorities after the resumed rotation, want 2: something was minted again", n)
	}
	if act := final.Active(); act == nil || act.ID != target {
		t.Errorf("active authority %v after the rotation, want the target %s", act, target)
	}
	if a := final.Get(old); a == nil || a.Phase != trust.Removed {
		t.Errorf("old authority %v, want removed", a)
	}
	testwait.Until(t, "the restarted control plane's bundle without the old root", 5*time.Second, func() bool {
		return len(cp2.CA.Roots()) == 1 && cp2.CA.Roots()[0].Equal(final.Get(target).Root)
	})
}

// TestStatusOutput: what `bulwark ca status` prints of a control plane
// with a connected proxy behind, a rotation held up and a revocation.
func TestStatusOutput(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	connectProxy(t, cp, "demo/api-1")
	if _, err := admin.Revoke(ctx10(t), &cav1.RevokeRequest{Kind: "workload", Value: "demo/db-1", Operator: &cav1.Operator{Reason: "key leaked"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Rotate(ctx10(t), &cav1.RotateRequest{Kind: "root", Operator: &cav1.Operator{As: "bob"}}); err != nil {
		t.Fatal(err)
	}
	var st *cav1.TrustStatus
	testwait.Until(t, "the rotation waiting", 10*time.Second, func() bool {
		var err error
		st, err = admin.Status(ctx10(t), &cav1.StatusRequest{})
		return err == nil && st.GetRotation().GetWaiting() != ""
	})
	var b strings.Builder
	controlplane.WriteTrustStatus(&b, st, time.Now())
	out := b.String()
	stored := load(t, dir)
	for _, want := range []string{
		"Trust domain cluster.local, bundle sequence ",
		"Authorities:",
		stored.Rotation.Old + "  active",
		stored.Rotation.Target + "  prepared",
		"Bulwark root CA cluster.local",
		"Proxies: 1 connected: 1 hold none reported",
		"demo/api-1 (its agent reported no bundle",
		"Rotation: root of " + stored.Rotation.Old + " to " + stored.Rotation.Target + ", step activate",
		"waiting: ",
		"Revocations:\n  workload demo/db-1: 0 serials",
		"key leaked",
		"Latest events:",
		`rotate ` + stored.Rotation.Old + ` by uid `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	// Cancelled, the rotation is forgotten; its target stays prepared.
	if _, err := admin.CancelRotation(ctx10(t), &cav1.CancelRotationRequest{}); err != nil {
		t.Fatal(err)
	}
	after := load(t, dir)
	if after.Rotation != nil || after.Get(stored.Rotation.Target).Phase != trust.Prepared {
		t.Errorf("after cancel: rotation %v, target %s", after.Rotation, after.Get(stored.Rotation.Target).Phase)
	}
	if _, err := admin.CancelRotation(ctx10(t), &cav1.CancelRotationRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("cancel with no rotation: %v, want FailedPrecondition", err)
	}
}

// signWith asks for a certificate for workload over tc: presenting the
// certificate in tc renews it.
func signWith(t *testing.T, cp *controlplane.ControlPlane, tc *tls.Config, workload string) error {
	t.Helper()
	_, _, err := requestCert(t, cp, tc, workload, "")
	return err
}

// TestRevokedWorkloadCannotRenew: once a workload is revoked the issuer
// refuses to renew its certificate and to give it a first one; the serial
// of the leaf it presents goes on the CRL; unrevoked, it renews again.
func TestRevokedWorkloadCannotRenew(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	tc := workloadTLS(t, cp, "demo/api-1")
	if err := signWith(t, cp, tc, "demo/api-1"); err != nil {
		t.Fatalf("renewal before the revocation: %v", err)
	}
	if _, err := admin.Revoke(ctx10(t), &cav1.RevokeRequest{Kind: "workload", Value: "demo/api-1", Operator: &cav1.Operator{Reason: "stolen key"}}); err != nil {
		t.Fatal(err)
	}
	// The serials of the certificates issued to it are on the CRLs.
	var issued []string
	for _, c := range cp.Certificates() {
		if c.Workload == "demo/api-1" {
			issued = append(issued, c.Serial)
		}
	}
	if r := load(t, dir).Revocations; len(r) != 1 || len(issued) != 1 || !slices.Contains(r[0].Serials, issued[0]) {
		t.Errorf("revocation %+v does not cover the certificate issued last %v", r, issued)
	}
	onCRL := false
	for _, der := range load(t, dir).Bundle().CRLs {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range rl.RevokedCertificateEntries {
			onCRL = onCRL || (len(issued) == 1 && e.SerialNumber.Text(16) == issued[0])
		}
	}
	if !onCRL {
		t.Errorf("the serial %v is on no CRL of the bundle", issued)
	}
	err := signWith(t, cp, tc, "demo/api-1")
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") || !strings.Contains(err.Error(), "stolen key") {
		t.Errorf("renewal of a revoked workload: %v, want PermissionDenied saying it is revoked and why", err)
	}
	tok, err := cp.Tokens.Create("demo/api-1", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(
		spiffetls.ClientConfig(nil, x509bundle.FromX509Authorities(meshTD, cp.CA.Roots()), cp.Identity))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(ctx10(t), contract.AuthorizationKey, contract.JoinTokenScheme+" "+tok)
	if _, err := cav1.NewCertificateServiceClient(conn).SignCertificate(ctx, &cav1.SignCertificateRequest{Csr: csr, Workload: "demo/api-1"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a first certificate for a revoked workload: %v, want PermissionDenied", err)
	}
	if err := signWith(t, cp, workloadTLS(t, cp, "demo/db-1"), "demo/db-1"); err != nil {
		t.Errorf("another workload's renewal: %v", err)
	}
	if _, err := admin.Unrevoke(ctx10(t), &cav1.UnrevokeRequest{Kind: "workload", Value: "demo/api-1"}); err != nil {
		t.Fatal(err)
	}
	if err := signWith(t, cp, tc, "demo/api-1"); err != nil {
		t.Errorf("renewal after unrevoke: %v", err)
	}
}

// watchBundle opens the agent's bundle stream over tc and returns a
// function that waits for the bundle of sequence seq (or later) and acks
// it as installed and loaded by Envoy.
func watchBundle(t *testing.T, cp *controlplane.ControlPlane, tc *tls.Config) func(seq uint64) {
	t.Helper()
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := cav1.NewCertificateServiceClient(conn).WatchTrustBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return func(seq uint64) {
		t.Helper()
		for {
			b, err := stream.Recv()
			if err != nil {
				t.Fatalf("bundle stream: %v", err)
			}
			if b.GetSequence() >= seq {
				if err := stream.Send(&cav1.TrustBundleAck{Sequence: b.GetSequence(), ProxySequence: b.GetSequence()}); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
}

// TestActivateWaitsForTheAgentsReport: the evidence joins the proxies
// connected over ADS with their agents' reports. A proxy whose agent
// holds the bundle before the new authority holds up its activation,
// shown in proxy-status and ca status; once it acknowledges the new
// bundle, activate goes through.
func TestActivateWaitsForTheAgentsReport(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	tc := workloadTLS(t, cp, "demo/api-1")
	connectProxy(t, cp, "demo/api-1")
	ack := watchBundle(t, cp, tc)
	seq := load(t, dir).Sequence
	ack(seq)
	testwait.Until(t, "the report of bundle "+fmt.Sprint(seq), 5*time.Second, func() bool {
		ps := cp.Proxies()
		return len(ps) == 1 && ps[0].Bundle != nil && ps[0].Bundle.ProxySeq == seq
	})

	prep, err := admin.Prepare(ctx10(t), &cav1.PrepareRequest{Kind: "root"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Activate(ctx10(t), &cav1.AuthorityRequest{Id: prep.GetAuthority()})
	if g := gateRefusal(err); g == nil || len(g.GetLaggards()) != 1 || !strings.Contains(g.GetLaggards()[0], fmt.Sprintf("demo/api-1 (holds bundle %d", seq)) {
		t.Fatalf("activate before the proxy holds the new bundle: %v, want a refusal naming demo/api-1 at bundle %d", err, seq)
	}
	if b := cp.Proxies()[0].Bundle; b.Current != prep.GetSequence() {
		t.Errorf("proxy-status current bundle %d, want %d", b.Current, prep.GetSequence())
	}
	var out strings.Builder
	controlplane.WriteProxyStatus(&out, cp.Proxies(), time.Now())
	if want := fmt.Sprintf("%d/%d BEHIND (current %d)", seq, seq, prep.GetSequence()); !strings.Contains(out.String(), want) {
		t.Errorf("proxy-status lacks %q:\n%s", want, out.String())
	}

	ack(prep.GetSequence())
	testwait.Until(t, "activate to go through", 5*time.Second, func() bool {
		_, err := admin.Activate(ctx10(t), &cav1.AuthorityRequest{Id: prep.GetAuthority()})
		return err == nil
	})
	// The leaf the agent presents was signed by the old authority: the
	// old one cannot be removed while it does.
	old := load(t, dir).Authorities[0].ID
	_, err = admin.Remove(ctx10(t), &cav1.AuthorityRequest{Id: old})
	if g := gateRefusal(err); g == nil || g.GetStep() != "remove" || !strings.Contains(strings.Join(g.GetLaggards(), " "), "demo/api-1") {
		t.Errorf("remove %s while demo/api-1 presents its leaf: %v, want the remove gate naming demo/api-1", old, err)
	}
}

// TestAutomaticRenewal: an intermediate near its expiry is renewed by an
// automatic rotation when the root key is held; without the root key the
// control plane warns (log and gauge) and changes nothing.
func TestAutomaticRenewal(t *testing.T) {
	t.Run("root key held", func(t *testing.T) {
		dir := t.TempDir()
		if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: meshTD, IntermediateTTL: 20 * 24 * time.Hour}); err != nil {
			t.Fatal(err)
		}
		if err := controlplane.InitRoster(dir); err != nil {
			t.Fatal(err)
		}
		old := load(t, dir).Active().ID
		startOn(t, dir, nil)
		testwait.Until(t, "the intermediate renewed", 15*time.Second, func() bool {
			st := load(t, dir)
			return st.Rotation == nil && st.Active().ID != old
		})
		st := load(t, dir)
		if a := st.Get(old); a.Phase != trust.Removed {
			t.Errorf("the old intermediate is %s, want removed", a.Phase)
		}
		if left := time.Until(st.Active().Signing().NotAfter); left < 365*24*time.Hour {
			t.Errorf("the new intermediate expires in %s, want the default two years", left)
		}
		auto := false
		for _, e := range st.Events {
			if e.Action == "rotate" && strings.Contains(e.Who, "automatic renewal") {
				auto = true
			}
		}
		if !auto {
			t.Errorf("no rotate event by the automatic renewal in %v", st.Events)
		}
	})
	t.Run("no root key", func(t *testing.T) {
		dir := t.TempDir()
		if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: meshTD, IntermediateTTL: 20 * 24 * time.Hour}); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(dir, ca.RootKeyFile)); err != nil {
			t.Fatal(err)
		}
		log, lines := testlog.Capture()
		cp, err := controlplane.Start(context.Background(), controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0",
			HTTPAddress: "127.0.0.1:0", CADir: dir, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cp.Stop() })
		testwait.Until(t, "the expiry warning", 5*time.Second, func() bool {
			return strings.Contains(lines.String(), "expires soon and will not be renewed automatically")
		})
		metrics := fetch(t, "http://"+cp.HTTPAddr.String()+"/metrics")
		for _, want := range []string{
			"bulwark_trust_intermediate_expiring 1",
			"bulwark_trust_bundle_sequence 1",
			`bulwark_trust_authority_expiry_timestamp_seconds{authority="` + load(t, dir).Active().ID + `",cert="signing",phase="active"}`,
			"bulwark_trust_crl_problems 0",
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		if st := load(t, dir); st.Rotation != nil || len(st.Authorities) != 1 {
			t.Errorf("without the root key something was started: rotation %v, %d authorities", st.Rotation, len(st.Authorities))
		}
		st, err := adminClient(t, cp).Status(ctx10(t), &cav1.StatusRequest{})
		if err != nil || !strings.Contains(strings.Join(st.GetWarnings(), "\n"), "hand in the next intermediate") {
			t.Errorf("status warnings %q (%v): want the expiry and what to do", st.GetWarnings(), err)
		}
	})
}

// TestGivenCAHasNoLifecycle: with a CA given by the embedder, the admin
// service says there is no lifecycle and refuses every step.
func TestGivenCAHasNoLifecycle(t *testing.T) {
	c, _ := newCA(t, meshTD)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	cp := start(t, controlplane.Config{CA: &ownCA{CA: c}, TokenDir: t.TempDir(), AdminSocket: sock})
	admin := adminClient(t, cp)
	st, err := admin.Status(ctx10(t), &cav1.StatusRequest{})
	if err != nil || st.GetManaged() || !strings.Contains(st.GetUnmanaged(), "no lifecycle") {
		t.Errorf("status %v, %v: want unmanaged, saying so", st, err)
	}
	if _, err := admin.Rotate(ctx10(t), &cav1.RotateRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("rotate: %v, want FailedPrecondition", err)
	}
}

func fetch(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestWarmupWithoutRoster: a control plane that cannot tell which proxies
// were connected before it started (a CA directory from before the
// roster) refuses every gate for the whole warm-up, saying why; after it,
// the gates decide on what is connected.
func TestWarmupWithoutRoster(t *testing.T) {
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: meshTD}); err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.Start(context.Background(), controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0",
		CADir: dir, Logger: testlog.New(t), EvidenceWarmup: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	admin := adminClient(t, cp)
	prep, err := admin.Prepare(ctx10(t), &cav1.PrepareRequest{Kind: "intermediate"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Activate(ctx10(t), &cav1.AuthorityRequest{Id: prep.GetAuthority()})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "does not know which proxies were connected before it") {
		t.Fatalf("activate during the warm-up: %v, want a refusal saying the evidence is not complete", err)
	}
	testwait.Until(t, "activate after the warm-up", 5*time.Second, func() bool {
		_, err := admin.Activate(ctx10(t), &cav1.AuthorityRequest{Id: prep.GetAuthority()})
		return err == nil
	})
	// From then on the roster is kept (empty: nothing is connected).
	if b, err := os.ReadFile(filepath.Join(dir, controlplane.RosterFile)); err != nil || !strings.Contains(string(b), `"nodes": []`) {
		t.Errorf("roster after the warm-up: %q, %v", b, err)
	}
}

// TestARevokedAuthorityVouchesForNobody: once the intermediate that
// signed a workload's certificate is revoked, that certificate is no
// credential (it renews nothing and watches no bundle) unless this
// control plane issued exactly it. Whoever holds the revoked key can
// mint a leaf naming any workload, and the handshake (which checks the
// chain against the roots, still trusted) lets it through; only the
// issuer's check stops it. A certificate issued by an earlier process
// (before a restart) is no credential either: the workload attests
// again.
func TestARevokedAuthorityVouchesForNobody(t *testing.T) {
	dir := newCADir(t)
	before := startOn(t, dir, nil)
	tcDB := workloadTLS(t, before, "demo/db-1")
	if err := before.Stop(); err != nil {
		t.Fatal(err)
	}
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	tc := workloadTLS(t, cp, "demo/api-1")
	old := load(t, dir).Active()
	if _, err := admin.Prepare(ctx10(t), &cav1.PrepareRequest{Kind: "intermediate"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Revoke(ctx10(t), &cav1.RevokeRequest{Kind: "serial", Value: old.Signing().SerialNumber.Text(16),
		Operator: &cav1.Operator{Reason: "intermediate key leaked", Force: true}}); err != nil {
		t.Fatal(err)
	}
	st := load(t, dir)
	if !st.Get(old.ID).Revoked || st.Active().ID == old.ID {
		t.Fatalf("authority %s not revoked and replaced", old.ID)
	}

	// This process issued api-1's certificate itself: it renews, onto
	// the new authority.
	if _, leaf, err := requestCert(t, cp, tc, "demo/api-1", ""); err != nil {
		t.Errorf("renewal with a certificate this control plane issued: %v", err)
	} else if got := st.IssuerOf(leaf); got != st.Active().ID {
		t.Errorf("renewed under %s, want the new authority %s", got, st.Active().ID)
	}
	// db-1's came from the process before the restart.
	err := signWith(t, cp, tcDB, "demo/db-1")
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no credential") || !strings.Contains(err.Error(), old.ID) {
		t.Errorf("renewal with a leaf of the revoked authority issued before a restart: %v, want PermissionDenied naming %s", err, old.ID)
	}

	// A leaf forged with the leaked key, for another workload.
	leaked, err := ca.New(ca.Config{TrustDomain: meshTD, Roots: []*x509.Certificate{old.Root}, Chain: old.Chain, Signer: old.Key})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dbID := spiffeid.RequireFromPath(meshTD, "/ns/demo/sa/db")
	chain, err := leaked.SignWorkloadSVID(key.Public(), dbID, ca.Workload{Namespace: "demo", Name: "db-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged := spiffetls.ClientConfig(&x509svid.SVID{ID: dbID, Certificates: chain, PrivateKey: key},
		x509bundle.FromX509Authorities(meshTD, cp.CA.Roots()), cp.Identity)
	if err := signWith(t, cp, forged, "demo/db-1"); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no credential") {
		t.Errorf("renewal with a leaf forged under the revoked authority: %v, want PermissionDenied", err)
	}
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(forged)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := cav1.NewCertificateServiceClient(conn).WatchTrustBundle(ctx10(t))
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("bundle watch with the forged leaf: %v, want PermissionDenied", err)
	}

	// db-1 attests again and carries on under the new authority.
	fresh := workloadTLS(t, cp, "demo/db-1")
	if err := signWith(t, cp, fresh, "demo/db-1"); err != nil {
		t.Errorf("renewal with a leaf of the new authority: %v", err)
	}
}

// TestRevokeByAuthority: an authority is revoked by its ID (a prefix
// will do, as everywhere), without digging its signing certificate's
// serial out first; an unknown ID is NotFound; unrevoke takes it back.
func TestRevokeByAuthority(t *testing.T) {
	dir := newCADir(t)
	cp := startOn(t, dir, nil)
	admin := adminClient(t, cp)
	old := load(t, dir).Active()
	if _, err := admin.Prepare(ctx10(t), &cav1.PrepareRequest{Kind: "intermediate"}); err != nil {
		t.Fatal(err)
	}
	op := &cav1.Operator{Reason: "intermediate key leaked"}
	if _, err := admin.Revoke(ctx10(t), &cav1.RevokeRequest{Kind: "authority", Value: "ffff0000", Operator: op}); status.Code(err) != codes.NotFound {
		t.Errorf("revoking an unknown authority: %v, want NotFound", err)
	}
	if _, err := admin.Revoke(ctx10(t), &cav1.RevokeRequest{Kind: "authority", Value: old.ID[:6], Operator: op}); err != nil {
		t.Fatal(err)
	}
	if st := load(t, dir); !st.Get(old.ID).Revoked || st.Active().ID == old.ID {
		t.Fatalf("authority %s not revoked and replaced after a revocation by its ID", old.ID)
	}
	if _, err := admin.Unrevoke(ctx10(t), &cav1.UnrevokeRequest{Kind: "authority", Value: old.ID}); err != nil {
		t.Fatal(err)
	}
	if load(t, dir).Get(old.ID).Revoked {
		t.Errorf("authority %s still revoked after unrevoke by its ID", old.ID)
	}
}
