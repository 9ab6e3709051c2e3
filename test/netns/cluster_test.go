package netns

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The cluster every test in this package shares: a bridge, a namespace
// per pod, the control plane on the bridge's address.
var cl *cluster

const (
	subnet    = "10.77.0"
	gatewayIP = subnet + ".1"
	proxyGID  = 1337
	certTTL   = 40 * time.Second // short, so rotation is seen within the test
)

// The mesh: frontend and other call api by its service address. api
// serves HTTP on 8080 and a TCP line echo on 9000.
const meshHead = `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: pods}
spec:
  services:
    - {name: frontend, namespace: demo, address: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080, protocol: http}]}
    - name: api
      namespace: demo
      address: 10.96.0.11
      ports:
        - {name: http, port: 8080, protocol: http}
        - {name: echo, port: 9000, protocol: tcp}
  workloads:
    - {name: frontend-1, namespace: demo, serviceAccount: frontend, address: 10.77.0.10, capture: transparent, services: [frontend]}
    - {name: api-1, namespace: demo, serviceAccount: api, labels: {app: api}, address: 10.77.0.11, capture: transparent, services: [api]}
    - {name: other-1, namespace: demo, serviceAccount: other, address: 10.77.0.12, capture: transparent}
`

// The policies every test starts from: frontend and namespace foo may
// call api; other only /public/* on HTTP; frontend and other the echo
// port, but a DENY shuts other out of it; nobody reaches /admin.
const basePolicies = `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-allow, namespace: demo}
spec:
  selector: {service: api}
  action: ALLOW
  rules:
    - from: [{serviceAccounts: [frontend]}, {namespaces: [foo]}]
      to: [{ports: [8080]}]
    - from: [{serviceAccounts: [other]}]
      to: [{ports: [8080], paths: ["/public/*"]}]
    - from: [{serviceAccounts: [frontend, other]}]
      to: [{ports: [9000]}]
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  selector: {service: api}
  action: DENY
  rules:
    - from: [{namespaces: ["*"]}, {unauthenticated: true}]
      to: [{ports: [8080], paths: ["/admin", "/admin/*"]}]
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: echo-no-other, namespace: demo}
spec:
  selector: {service: api}
  action: DENY
  rules:
    - from: [{serviceAccounts: [other]}]
      to: [{ports: [9000]}]
`

// mesh is the mesh file of the base mesh plus extra documents.
func mesh(extra ...string) string { return meshHead + basePolicies + strings.Join(extra, "") }

type pod struct {
	name, ns, ip string
	workload     string // namespace/name, empty for the attacker
}

type cluster struct {
	id      string
	bridge  string
	dir     string
	bin     string
	envoy   string
	mesh    string
	cp      *controlplane.ControlPlane
	pods    map[string]*pod
	procs   []*exec.Cmd
	logs    []string
	mu      sync.Mutex
	cleanup []func()
}

func TestMain(m *testing.M) {
	code := func() int {
		c, err := setupCluster()
		if c != nil {
			defer c.teardown()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "netns tests cannot run: %v\n", err)
			if c != nil {
				c.dumpLogs(os.Stderr)
			}
			return 1
		}
		cl = c
		code := m.Run()
		if code != 0 {
			c.dumpLogs(os.Stderr)
		}
		return code
	}()
	os.Exit(code)
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func setupCluster() (*cluster, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("network namespaces and iptables need root (run as root; CI does)")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (apt-get install iproute2 iptables)", tool)
		}
	}
	envoyBin, err := envoy.Find()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bwnet-")
	if err != nil {
		return nil, err
	}
	id := fmt.Sprintf("%04x", rand.IntN(0xffff))
	c := &cluster{id: id, bridge: "bwbr" + id, dir: dir, envoy: envoyBin, pods: map[string]*pod{}}
	c.cleanup = append(c.cleanup, func() { os.RemoveAll(dir) })

	c.bin = filepath.Join(dir, "bulwark")
	build := exec.Command("go", "build", "-o", c.bin, "github.com/bulwarkmesh/bulwark/cmd/bulwark")
	if out, err := build.CombinedOutput(); err != nil {
		return c, fmt.Errorf("build bulwark: %v: %s", err, out)
	}

	// The bridge, with the control plane's address on the host side.
	if err := run("ip", "link", "add", c.bridge, "type", "bridge"); err != nil {
		return c, err
	}
	c.cleanup = append(c.cleanup, func() { _ = run("ip", "link", "del", c.bridge) })
	if err := run("ip", "addr", "add", gatewayIP+"/24", "dev", c.bridge); err != nil {
		return c, err
	}
	if err := run("ip", "link", "set", c.bridge, "up"); err != nil {
		return c, err
	}
	for i, p := range []pod{
		{name: "frontend-1", ip: subnet + ".10", workload: "demo/frontend-1"},
		{name: "api-1", ip: subnet + ".11", workload: "demo/api-1"},
		{name: "other-1", ip: subnet + ".12", workload: "demo/other-1"},
		{name: "attacker", ip: subnet + ".66"},
	} {
		p := p
		p.ns = "bw" + id + "-" + p.name
		if err := c.addNetns(&p, i); err != nil {
			return c, err
		}
		c.pods[p.name] = &p
	}

	// The control plane: a CA, the mesh file, ADS on the bridge.
	caDir := filepath.Join(dir, "ca")
	if err := ca.Init(ca.InitConfig{Dir: caDir, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}); err != nil {
		return c, err
	}
	c.mesh = filepath.Join(dir, "mesh", "mesh.yaml")
	if err := os.MkdirAll(filepath.Dir(c.mesh), 0o755); err != nil {
		return c, err
	}
	if err := c.writeMesh(mesh()); err != nil {
		return c, err
	}
	logf, err := os.Create(filepath.Join(dir, "controlplane.log"))
	if err != nil {
		return c, err
	}
	c.logs = append(c.logs, logf.Name())
	cp, err := controlplane.Start(context.Background(), controlplane.Config{
		MeshPaths: []string{filepath.Dir(c.mesh)}, CADir: caDir, XDSAddress: gatewayIP + ":0",
		Logger: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})), Debounce: 20 * time.Millisecond,
	})
	if err != nil {
		return c, err
	}
	c.cp = cp
	c.cleanup = append(c.cleanup, func() { _ = cp.Stop() })

	// Each pod: capture (the init container), the app, the agent that
	// runs Envoy with the proxy's group.
	for _, name := range []string{"frontend-1", "api-1", "other-1"} {
		p := c.pods[name]
		if err := c.inPod(p, nil, "iptables"); err != nil {
			return c, err
		}
		if err := c.start(p, nil, nil, "demo-app", "--name", p.name, "--http", "0.0.0.0:8080", "--tcp", "0.0.0.0:9000"); err != nil {
			return c, err
		}
		token, err := cp.Tokens.Create(p.workload, 10*time.Minute)
		if err != nil {
			return c, err
		}
		gid := uint32(proxyGID)
		if err := c.start(p, &syscall.Credential{Uid: 0, Gid: gid}, []string{"BULWARK_JOIN_TOKEN=" + token}, "agent",
			"--workload", p.workload, "--control-plane", cp.XDSAddr.String(), "--bundle", filepath.Join(caDir, ca.RootCertFile),
			"--join-token-env", "BULWARK_JOIN_TOKEN", "--cert-ttl", certTTL.String(),
			"--sds-socket", filepath.Join(dir, p.name+".sock"), "--bootstrap", filepath.Join(dir, p.name+".bootstrap.yaml"),
			"--run-envoy", "--envoy", c.envoy, "--envoy-log-level", "info",
		); err != nil {
			return c, err
		}
	}
	return c, c.waitReady(60 * time.Second)
}

// addNetns creates a namespace wired to the bridge with address ip.
func (c *cluster) addNetns(p *pod, i int) error {
	veth := fmt.Sprintf("bwv%s%d", c.id, i)
	steps := [][]string{
		{"ip", "netns", "add", p.ns},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.ns},
		{"ip", "link", "set", veth, "master", c.bridge, "up"},
		{"ip", "netns", "exec", p.ns, "ip", "addr", "add", p.ip + "/24", "dev", "eth0"},
		{"ip", "netns", "exec", p.ns, "ip", "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", p.ns, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", p.ns, "ip", "route", "add", "default", "via", gatewayIP},
	}
	c.cleanup = append(c.cleanup, func() { _ = run("ip", "netns", "del", p.ns) })
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	return nil
}

// inPod runs a bulwark subcommand to completion inside the pod.
func (c *cluster) inPod(p *pod, cred *syscall.Credential, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.ns, c.bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s in %s: %v: %s", strings.Join(args, " "), p.name, err, out)
	}
	return nil
}

// start runs a bulwark subcommand in the background inside the pod, its
// output in a log file.
func (c *cluster) start(p *pod, cred *syscall.Credential, env []string, args ...string) error {
	logPath := filepath.Join(c.dir, p.name+"."+args[0]+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.ns, c.bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	c.mu.Lock()
	c.procs = append(c.procs, cmd)
	c.logs = append(c.logs, logPath)
	c.mu.Unlock()
	go func() { _ = cmd.Wait(); f.Close() }()
	return nil
}

func (c *cluster) writeMesh(body string) error {
	tmp := c.mesh + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.mesh)
}

// waitReady waits until every sidecar's Envoy is LIVE.
func (c *cluster) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for _, name := range []string{"frontend-1", "api-1", "other-1"} {
		for {
			body, err := c.admin(c.pods[name], "/ready")
			if err == nil && strings.TrimSpace(body) == "LIVE" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the sidecar of %s is not ready after %s (last: %q, %v)", name, d, body, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func (c *cluster) teardown() {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for _, p := range procs {
		if p.Process != nil {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
		}
	}
	time.Sleep(500 * time.Millisecond)
	for _, p := range procs {
		if p.Process != nil {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		}
	}
	for i := len(c.cleanup) - 1; i >= 0; i-- {
		c.cleanup[i]()
	}
}

func (c *cluster) dumpLogs(w io.Writer) {
	for _, l := range c.logs {
		b, _ := os.ReadFile(l)
		if len(b) > 20000 {
			b = b[len(b)-20000:]
		}
		fmt.Fprintf(w, "----- %s -----\n%s\n", filepath.Base(l), b)
	}
}

// dialIn opens a TCP connection from inside the pod's network namespace:
// the socket is created on a thread that has entered the namespace, and
// stays there.
func dialIn(p *pod, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked: if restoring the namespace failed it
		// must die with this goroutine rather than serve another.
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + p.ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if rerr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); rerr == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.c, r.err
}

// client is an HTTP client whose connections start inside the pod, as
// the pod's app: they go through the pod's capture rules.
func client(p *pod, tc *tls.Config) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   tc,
			DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
				return dialIn(p, addr)
			},
		},
	}
}

// admin GETs a path from the pod's Envoy admin interface (loopback inside
// the pod).
func (c *cluster) admin(p *pod, path string) (string, error) {
	resp, err := client(p, nil).Get("http://127.0.0.1:15000" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
