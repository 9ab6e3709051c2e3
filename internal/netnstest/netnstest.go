// Package netnstest runs workloads the way they run in pods, for tests:
// a bridge in the root network namespace, one network namespace per pod
// with an address on it, processes started inside them, and helpers that
// open connections from inside a pod. It needs root. Traffic stays on the
// bridge and on loopback.
package netnstest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
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
	"time"

	"golang.org/x/sys/unix"
)

// Pod is a network namespace on the bridge.
type Pod struct {
	Name string
	NS   string // network namespace name
	IP   string
}

// Net is a bridge and its pods.
type Net struct {
	ID      string
	Bridge  string
	Gateway string // the bridge's address, in the root namespace
	Dir     string // logs, sockets, bootstraps
	Bin     string // the bulwark binary, built by New

	mu      sync.Mutex
	pods    map[string]*Pod
	procs   []*exec.Cmd
	logs    []string
	cleanup []func()
	nextIf  int
}

// New builds the bulwark binary and creates a bridge with address
// gateway (e.g. "10.77.0.1") on a /24. Call Teardown when done, also
// after an error.
func New(gateway string) (*Net, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("network namespaces and iptables need root: run make test as root (CI does); go test -short ./... leaves these tests out")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: scripts/install-deps.sh installs it as root (apt-get install iproute2 iptables)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "bwnet-")
	if err != nil {
		return nil, err
	}
	id := fmt.Sprintf("%04x", rand.IntN(0xffff))
	n := &Net{ID: id, Bridge: "bwbr" + id, Gateway: gateway, Dir: dir, pods: map[string]*Pod{}}
	n.cleanup = append(n.cleanup, func() { os.RemoveAll(dir) })
	n.Bin = filepath.Join(dir, "bulwark")
	build := exec.Command("go", "build", "-o", n.Bin, "github.com/bulwarkmesh/bulwark/cmd/bulwark")
	if out, err := build.CombinedOutput(); err != nil {
		return n, fmt.Errorf("build bulwark: %v: %s", err, out)
	}
	if err := Run("ip", "link", "add", n.Bridge, "type", "bridge"); err != nil {
		return n, err
	}
	n.cleanup = append(n.cleanup, func() { _ = Run("ip", "link", "del", n.Bridge) })
	if err := Run("ip", "addr", "add", gateway+"/24", "dev", n.Bridge); err != nil {
		return n, err
	}
	return n, Run("ip", "link", "set", n.Bridge, "up")
}

// Run runs a command to completion and reports its output on failure.
func Run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// AddPod creates a namespace wired to the bridge with address ip.
func (n *Net) AddPod(name, ip string) (*Pod, error) {
	n.mu.Lock()
	veth := fmt.Sprintf("bwv%s%d", n.ID, n.nextIf)
	n.nextIf++
	p := &Pod{Name: name, NS: "bw" + n.ID + "-" + name, IP: ip}
	n.pods[name] = p
	n.cleanup = append(n.cleanup, func() { _ = Run("ip", "netns", "del", p.NS) })
	n.mu.Unlock()
	for _, s := range [][]string{
		{"ip", "netns", "add", p.NS},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.NS},
		{"ip", "link", "set", veth, "master", n.Bridge, "up"},
		{"ip", "netns", "exec", p.NS, "ip", "addr", "add", ip + "/24", "dev", "eth0"},
		{"ip", "netns", "exec", p.NS, "ip", "link", "set", "eth0", "up"},
		{"ip", "netns", "exec", p.NS, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", p.NS, "ip", "route", "add", "default", "via", n.Gateway},
	} {
		if err := Run(s...); err != nil {
			return p, err
		}
	}
	return p, nil
}

// Pod returns a pod by name.
func (n *Net) Pod(name string) *Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pods[name]
}

// Exec runs a bulwark subcommand to completion inside the pod.
func (n *Net) Exec(p *Pod, cred *syscall.Credential, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.NS, n.Bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s in %s: %v: %s", strings.Join(args, " "), p.Name, err, out)
	}
	return nil
}

// Start runs a bulwark subcommand in the background inside the pod, its
// output in Dir/<pod>.<subcommand>.log (see LogPath).
func (n *Net) Start(p *Pod, cred *syscall.Credential, env []string, args ...string) error {
	logPath := n.LogPath(p, args[0])
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.NS, n.Bin}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	n.mu.Lock()
	n.procs = append(n.procs, cmd)
	n.logs = append(n.logs, logPath)
	n.mu.Unlock()
	go func() { _ = cmd.Wait(); f.Close() }()
	return nil
}

// LogPath is where Start writes the output of a pod's subcommand.
func (n *Net) LogPath(p *Pod, subcommand string) string {
	return filepath.Join(n.Dir, p.Name+"."+subcommand+".log")
}

// AddLog has DumpLogs include a file.
func (n *Net) AddLog(path string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.logs = append(n.logs, path)
}

// Teardown stops every process and removes the namespaces, the bridge
// and the directory.
func (n *Net) Teardown() {
	n.mu.Lock()
	procs := n.procs
	cleanup := n.cleanup
	n.mu.Unlock()
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
	for i := len(cleanup) - 1; i >= 0; i-- {
		cleanup[i]()
	}
}

// DumpLogs writes the tail of every log to w.
func (n *Net) DumpLogs(w io.Writer) {
	n.mu.Lock()
	logs := append([]string{}, n.logs...)
	n.mu.Unlock()
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 20000 {
			b = b[len(b)-20000:]
		}
		fmt.Fprintf(w, "----- %s -----\n%s\n", filepath.Base(l), b)
	}
}

// DialIn opens a TCP connection from inside the pod's network namespace:
// the socket is created on a thread that has entered the namespace, and
// stays there.
func DialIn(p *Pod, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked unless its namespace is restored: if
		// restoring failed it must die with this goroutine.
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + p.NS)
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

// Client is an HTTP client whose connections start inside the pod, as
// the pod's app: they go through the pod's capture rules.
func Client(p *Pod, tc *tls.Config) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   tc,
			DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
				return DialIn(p, addr)
			},
		},
	}
}

// Admin GETs a path from the Envoy admin interface on the pod's loopback.
func Admin(p *Pod, path string) (string, error) {
	resp, err := Client(p, nil).Get("http://127.0.0.1:15000" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// WaitLive waits until the Envoy of every pod reports LIVE.
func WaitLive(d time.Duration, pods ...*Pod) error {
	deadline := time.Now().Add(d)
	for _, p := range pods {
		for {
			body, err := Admin(p, "/ready")
			if err == nil && strings.TrimSpace(body) == "LIVE" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the sidecar of %s is not ready after %s (last: %q, %v)", p.Name, d, body, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}
