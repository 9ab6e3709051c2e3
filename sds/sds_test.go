package sds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testtier"
)

// serve starts an SDS server with a certificate and key on a socket in
// dir, and returns the socket's path.
func serve(t *testing.T, dir string, cfg Config) (*Server, string) {
	t.Helper()
	cfg.CertName, cfg.RootsName, cfg.Logger = "default", "ROOTCA", testlog.New(t)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	if err := s.UpdateCertificate([]*x509.Certificate{cert}, key); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateBundle(1, []*x509.Certificate{cert}, nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sds.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, path
}

// fetch asks the socket for the certificate and reports what it got:
// "key" when the answer holds a private key, else the error.
func fetch(path string) string {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		return err.Error()
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resourcev3.SecretType, ResourceNames: []string{"default"}}); err != nil {
		return err.Error()
	}
	resp, err := stream.Recv()
	if err != nil {
		return err.Error()
	}
	for _, r := range resp.GetResources() {
		if strings.Contains(string(r.GetValue()), "PRIVATE KEY") {
			return "key"
		}
	}
	return "no key in the answer"
}

func TestSocketIsTheOwnersOnly(t *testing.T) {
	_, path := serve(t, t.TempDir(), Config{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("socket mode %o, want 600", mode)
	}
}

// TestOnlyAllowedUsersGetTheKey: this process's own user gets the key
// by default; when only another user is allowed, this process is that
// other user's stranger and gets nothing.
func TestOnlyAllowedUsersGetTheKey(t *testing.T) {
	_, path := serve(t, t.TempDir(), Config{})
	if got := fetch(path); got != "key" {
		t.Fatalf("own user, default config: %s", got)
	}
	s, path := serve(t, t.TempDir(), Config{AllowedUIDs: []uint32{uint32(os.Getuid()) + 1}})
	if got := fetch(path); got == "key" {
		t.Fatal("a user not allowed got the key")
	}
	if n := s.Refused(); n < 1 {
		t.Errorf("refused %d connections, want at least 1", n)
	}
}

// TestAnotherUserIsRefused runs a client as user nobody against a
// socket it can open (mode 0666 here, so only the peer check stands in
// its way): nobody gets no key, the allowed user does.
func TestAnotherUserIsRefused(t *testing.T) {
	testtier.Needs(t, testtier.Root)
	if os.Getuid() != 0 {
		t.Fatal("needs root, to run a client as another user: run make test as root (CI does)")
	}
	dir, err := os.MkdirTemp("", "sds-peer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The helper is this test binary, copied where nobody may run it.
	bin := filepath.Join(dir, "sds.test")
	copyFile(t, os.Args[0], bin)
	s, path := serve(t, dir, Config{AllowedUIDs: []uint32{0}})
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	run := func(cred *syscall.Credential) string {
		cmd := exec.Command(bin, "-test.run=^TestHelperFetch$")
		cmd.Env = append(os.Environ(), "BULWARK_SDS_HELPER="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if r, ok := strings.CutPrefix(l, "FETCH: "); ok {
				return r
			}
		}
		t.Fatalf("helper said nothing:\n%s", out)
		return ""
	}
	if got := run(&syscall.Credential{Uid: 65534, Gid: 65534}); got == "key" {
		t.Fatal("user nobody got the workload's key")
	}
	if n := s.Refused(); n < 1 {
		t.Errorf("refused %d connections, want at least 1", n)
	}
	if got := run(nil); got != "key" {
		t.Errorf("root, the allowed user: %s", got)
	}
}

// TestHelperFetch is TestAnotherUserIsRefused's client, in a process of
// its own; it does nothing in a normal run.
func TestHelperFetch(t *testing.T) {
	path := os.Getenv("BULWARK_SDS_HELPER")
	if path == "" {
		t.Skip("helper process only")
	}
	fmt.Printf("FETCH: %s\n", fetch(path))
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
