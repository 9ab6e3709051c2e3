// Package kube tests the Kubernetes side of Bulwark against a real
// kube-apiserver (test/kube-apiserver, started once for the package): the
// informer source, policy status, TokenReview attestation, the CA Secret
// shared by replicas, the RBAC and manifests in examples/kind, and, as
// root, pods in network namespaces whose addresses are the EndpointSlice
// addresses. The tests fail, never skip, when the API server cannot start;
// go test -short (the unit tier) leaves them out by design and starts
// nothing.
package kube

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bulwarkmesh/bulwark/internal/testtier"
)

// apiServer is the one real API server of this package.
type apiServer struct {
	bin, dir       string
	port, etcdPort int
	cmd            *exec.Cmd
	Host, Token    string
	CAFile         string
	SAIssuer       string
}

var api *apiServer

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// The unit tier: no API server (and no 11-minute build of one);
		// every test skips (needAPIServer).
		os.Exit(m.Run())
	}
	os.Exit(func() int {
		a, err := startAPIServer()
		if err != nil {
			fmt.Fprintf(os.Stderr, "the real kube-apiserver could not start: %v\n", err)
			return 1
		}
		api = a
		defer a.stop()
		return m.Run()
	}())
}

// needAPIServer skips the test in the unit tier (-short), where TestMain
// starts no API server, naming what else it needs. Every test calls it
// first.
func needAPIServer(t *testing.T, more ...string) {
	t.Helper()
	testtier.Needs(t, append([]string{testtier.APIServer}, more...)...)
}

// harnessBinary returns the API server harness: $BULWARK_KUBE_APISERVER
// (make test builds it), or a fresh build (about 11 minutes cold).
func harnessBinary(dir string) (string, error) {
	if p := os.Getenv("BULWARK_KUBE_APISERVER"); p != "" {
		return p, nil
	}
	bin := filepath.Join(dir, "kube-apiserver-test")
	fmt.Fprintln(os.Stderr, "building the kube-apiserver harness (set BULWARK_KUBE_APISERVER to reuse one)...")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = "../kube-apiserver"
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build the harness: %w", err)
	}
	return bin, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startAPIServer() (*apiServer, error) {
	dir, err := os.MkdirTemp("", "bw-kube-")
	if err != nil {
		return nil, err
	}
	bin, err := harnessBinary(dir)
	if err != nil {
		return nil, err
	}
	// The ports are free when picked, not necessarily when the harness
	// binds them (another test package may take one meanwhile): pick
	// again if it could not start.
	for attempt := 1; ; attempt++ {
		a := &apiServer{bin: bin, dir: filepath.Join(dir, fmt.Sprintf("apiserver-%d", attempt))}
		if a.port, err = freePort(); err != nil {
			return nil, err
		}
		if a.etcdPort, err = freePort(); err != nil {
			return nil, err
		}
		if err = a.start(); err == nil || attempt == 3 {
			return a, err
		}
		fmt.Fprintf(os.Stderr, "kube-apiserver harness did not start (%v); trying other ports\n", err)
	}
}

// start runs the harness on the server's directory and ports, so a
// restart keeps etcd's data, the serving certificate, the admin token
// and the service account key.
func (a *apiServer) start() error {
	a.cmd = exec.Command(a.bin, "--dir", a.dir, "--port", strconv.Itoa(a.port), "--etcd-port", strconv.Itoa(a.etcdPort))
	a.cmd.Stderr = os.Stderr
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := a.cmd.Start(); err != nil {
		return err
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			return fmt.Errorf("the harness exited before it was ready")
		}
		var info struct {
			Host, Token, CAFile, SAIssuer string
		}
		if err := json.Unmarshal([]byte(line), &info); err != nil {
			return fmt.Errorf("harness said %q: %w", line, err)
		}
		a.Host, a.Token, a.CAFile, a.SAIssuer = info.Host, info.Token, info.CAFile, info.SAIssuer
		return nil
	case <-time.After(3 * time.Minute):
		_ = a.cmd.Process.Kill()
		return fmt.Errorf("the harness was not ready within 3 minutes")
	}
}

func (a *apiServer) stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
}

// restart stops the API server and starts it again on the same data.
func (a *apiServer) restart() error {
	a.stop()
	return a.start()
}

// admin returns an admin client config.
func (a *apiServer) admin() *rest.Config {
	return &rest.Config{Host: a.Host, BearerToken: a.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: a.CAFile},
		QPS: 100, Burst: 200}
}

func (a *apiServer) client(t testing.TB) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(a.admin())
	if err != nil {
		t.Fatal(err)
	}
	return c
}
