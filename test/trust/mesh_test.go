package trust

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/localmesh"
	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

// The test mesh: three workloads, each the only one behind its service,
// every call allowed by an ALLOW policy and every port STRICT (the
// default). Each service has an HTTP port and a TCP port; a caller
// reaches them through its sidecar at its local address on localPorts.
//
//	frontend-1 -> api-1, backend-1
//	api-1      -> backend-1
type spec struct {
	name, service string
	host          byte // last octet of its addresses
	calls         []string
}

var topology = []spec{
	{name: "frontend-1", service: "frontend", host: 1, calls: []string{"api", "backend"}},
	{name: "api-1", service: "api", host: 2, calls: []string{"backend"}},
	{name: "backend-1", service: "backend", host: 3},
}

const (
	namespace   = "demo"
	trustDomain = "cluster.local"
	httpPort    = 8080
	tcpPort     = 9000
)

// localPorts are where a caller's sidecar listens for its calls to a
// service: one pair of ports per service, the same in every caller.
func localPorts(service string) (httpLocal, tcpLocal int) {
	for i, s := range topology {
		if s.service == service {
			return 18000 + i, 19000 + i
		}
	}
	panic("no service " + service)
}

// meshYAML is the mesh file for the topology with the given second
// octet of its loopback addresses.
func meshYAML(octet int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: trust}
spec:
  trustDomain: %s
  services:
`, trustDomain)
	for _, s := range topology {
		fmt.Fprintf(&b, "    - {name: %s, namespace: %s, ports: [{name: http, port: %d, protocol: http}, {name: tcp, port: %d, protocol: tcp}]}\n",
			s.service, namespace, httpPort, tcpPort)
	}
	b.WriteString("  workloads:\n")
	for _, s := range topology {
		fmt.Fprintf(&b, `    - name: %s
      namespace: %s
      serviceAccount: %s
      address: 127.%d.1.%d
      localAddress: 127.%d.2.%d
      services: [%s]
`, s.name, namespace, s.service, octet, s.host, octet, s.host, s.service)
		if len(s.calls) > 0 {
			b.WriteString("      upstreams:\n")
			for _, c := range s.calls {
				h, p := localPorts(c)
				fmt.Fprintf(&b, "        - {service: %s, port: %d, localPort: %d}\n        - {service: %s, port: %d, localPort: %d}\n",
					c, httpPort, h, c, tcpPort, p)
			}
		}
	}
	for _, callee := range topology {
		var from []string
		for _, caller := range topology {
			for _, c := range caller.calls {
				if c == callee.service {
					from = append(from, caller.service)
				}
			}
		}
		if len(from) == 0 {
			continue
		}
		fmt.Fprintf(&b, `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: %s-callers, namespace: %s}
spec:
  selector: {service: %s}
  action: ALLOW
  rules: [{from: [{serviceAccounts: [%s]}]}]
`, callee.service, namespace, callee.service, strings.Join(from, ", "))
	}
	return b.String()
}

// nextOctet gives every mesh of the test binary its own addresses,
// 127.<octet>.0.0/16, so that a mesh never meets the leftovers of the
// one before it (nor `make run`, on 127.0.x.x, nor test/e2e, on 127.8x).
var nextOctet atomic.Int32

// options configure a mesh.
type options struct {
	// certTTL is what agents ask for and the control plane's cap
	// (--cert-ttl, --max-cert-ttl); zero leaves both at their defaults.
	certTTL time.Duration
	// reissueWithin is how soon after an activation every workload
	// replaces its leaf (serve --reissue-within, when it has the flag).
	reissueWithin time.Duration
	// serveFlags are added to `bulwark serve`'s command line.
	serveFlags []string
}

// mesh is a running test mesh: the control plane process, and per
// workload its agent process (with its Envoy) and its demo app.
type mesh struct {
	t        testing.TB
	opt      options
	envoyBin string
	dir      string // the test's directory: CA, mesh file, logs
	sockDir  string // short path for Unix sockets
	caDir    string
	meshPath string
	octet    int

	// reissue is the re-issue window in effect: what the test asked for,
	// or the default when serve cannot be told.
	reissue time.Duration

	cpAddr, cpHTTP, adminSocket string
	cp                          *proc
	cpStarts                    int

	workloads []*workload
}

// workload is one workload of the mesh.
type workload struct {
	spec
	m              *mesh
	address, local string
	app            *demoapp.App
	agent          *proc
	starts         int
}

func (w *workload) key() string { return namespace + "/" + w.name }
func (w *workload) id() string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + w.service
}
func (w *workload) admin() string {
	return net.JoinHostPort(w.local, strconv.Itoa(localmesh.AdminPort))
}

// startMesh brings up the control plane and every workload, and waits
// until every Envoy is live with a certificate and every call of the
// topology goes through. Everything is stopped when the test ends.
func startMesh(t *testing.T, opt options) *mesh {
	t.Helper()
	m := &mesh{t: t, opt: opt, envoyBin: envoytest.Bin(t), dir: t.TempDir(), octet: 100 + int(nextOctet.Add(1))%150}
	if bulwarkBin == "" {
		t.Fatal("the bulwark binary was not built (TestMain)")
	}
	var err error
	if m.sockDir, err = os.MkdirTemp("", "bwt-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(m.sockDir) })
	m.caDir = filepath.Join(m.dir, "ca")
	m.meshPath = filepath.Join(m.dir, "mesh.yaml")
	m.cpAddr = fmt.Sprintf("127.%d.0.1:15010", m.octet)
	m.cpHTTP = fmt.Sprintf("127.%d.0.1:15014", m.octet)
	m.adminSocket = filepath.Join(m.sockDir, "admin.sock")
	if err := os.WriteFile(m.meshPath, []byte(meshYAML(m.octet)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := m.run(30*time.Second, "ca", "init", "--dir", m.caDir, "--trust-domain", trustDomain); err != nil {
		t.Fatalf("bulwark ca init: %v\n%s", err, out)
	}
	t.Cleanup(m.stop)
	m.startControlPlane()
	for _, s := range topology {
		w := &workload{spec: s, m: m,
			address: fmt.Sprintf("127.%d.1.%d", m.octet, s.host), local: fmt.Sprintf("127.%d.2.%d", m.octet, s.host)}
		m.workloads = append(m.workloads, w)
		app, err := demoapp.Start(demoapp.Config{Name: w.name,
			HTTP: []string{net.JoinHostPort(w.local, strconv.Itoa(httpPort))},
			TCP:  []string{net.JoinHostPort(w.local, strconv.Itoa(tcpPort))}})
		if err != nil {
			t.Fatal(err)
		}
		w.app = app
		w.start()
	}
	for _, w := range m.workloads {
		w.waitReady(60 * time.Second)
	}
	m.waitCallsPass(30 * time.Second)
	return m
}

// workload returns the workload called name.
func (m *mesh) workload(name string) *workload {
	for _, w := range m.workloads {
		if w.name == name {
			return w
		}
	}
	m.t.Fatalf("no workload %s", name)
	return nil
}

// run runs the bulwark binary to completion and returns its combined
// output.
func (m *mesh) run(timeout time.Duration, args ...string) (string, error) {
	stdout, stderr, err := m.runSplit(timeout, args...)
	return stdout + stderr, err
}

// runSplit is run with stdout and stderr apart.
func (m *mesh) runSplit(timeout time.Duration, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bulwarkBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("bulwark %s: no answer within %s: %w", strings.Join(args, " "), timeout, ctx.Err())
	}
	return stdout.String(), stderr.String(), err
}

// serveHasFlag reports whether `bulwark serve` knows a flag.
func (m *mesh) serveHasFlag(name string) bool {
	out, _ := m.run(10*time.Second, "serve", "-h")
	return strings.Contains(out, "-"+name+" ")
}

// startControlPlane starts `bulwark serve` (again, after a kill: same
// addresses, same CA directory) and waits until it answers /healthz.
func (m *mesh) startControlPlane() {
	m.t.Helper()
	m.cpStarts++
	args := []string{"serve", "--mesh", m.meshPath, "--ca-dir", m.caDir,
		"--xds-address", m.cpAddr, "--http-address", m.cpHTTP, "--log-level", "debug"}
	if m.serveHasFlag("admin-socket") {
		args = append(args, "--admin-socket", m.adminSocket)
	} else {
		m.adminSocket = filepath.Join(m.caDir, "admin.sock") // the default
	}
	m.reissue = trust.DefaultReissueWithin
	if m.opt.reissueWithin > 0 {
		if !m.serveHasFlag("reissue-within") {
			m.t.Logf("bulwark serve has no --reissue-within flag: leaves are re-issued within the default %s after an activation, not %s", m.reissue, m.opt.reissueWithin)
		} else {
			args = append(args, "--reissue-within", m.opt.reissueWithin.String())
			m.reissue = m.opt.reissueWithin
		}
	}
	if m.opt.certTTL > 0 {
		args = append(args, "--max-cert-ttl", m.opt.certTTL.String())
	}
	args = append(args, m.opt.serveFlags...)
	p, err := startProc(fmt.Sprintf("control plane (start %d)", m.cpStarts),
		filepath.Join(m.dir, fmt.Sprintf("serve-%d.log", m.cpStarts)), args...)
	if err != nil {
		m.t.Fatal(err)
	}
	m.cp = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + m.cpHTTP + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.done:
			m.t.Fatalf("the control plane exited while starting: %v\n%s", p.err, p.tail(40))
		default:
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("the control plane did not answer /healthz within 30s (last: %v)\n%s", err, p.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killControlPlane SIGKILLs the control plane and waits until it is gone.
func (m *mesh) killControlPlane() {
	m.cp.kill()
}

// bundlePath is the trust bundle a (re)started agent begins from: the
// CA directory's root certificate.
func (m *mesh) bundlePath() string { return filepath.Join(m.caDir, ca.RootCertFile) }

// start creates a join token for w and starts its agent, which gets the
// first certificate and runs Envoy. It does not wait; see waitReady.
func (w *workload) start() {
	t := w.m.t
	t.Helper()
	w.starts++
	tok, stderr, err := w.m.runSplit(30*time.Second, "token", "create", "--workload", w.key(), "--ca-dir", w.m.caDir, "--ttl", "10m")
	if err != nil {
		t.Fatalf("bulwark token create: %v\n%s", err, stderr)
	}
	tokFile := filepath.Join(w.m.dir, fmt.Sprintf("%s-%d.token", w.name, w.starts))
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"agent", "--workload", w.key(), "--control-plane", w.m.cpAddr,
		"--trust-domain", trustDomain, "--bundle", w.m.bundlePath(), "--join-token-file", tokFile,
		"--sds-socket", filepath.Join(w.m.sockDir, w.name+".sock"),
		"--bootstrap", filepath.Join(w.m.dir, w.name+".bootstrap.yaml"),
		"--admin-address", w.admin(), "--run-envoy", "--envoy", w.m.envoyBin, "--log-level", "debug"}
	if w.m.opt.certTTL > 0 {
		args = append(args, "--cert-ttl", w.m.opt.certTTL.String())
	}
	p, err := startProc(fmt.Sprintf("agent of %s (start %d)", w.name, w.starts),
		filepath.Join(w.m.dir, fmt.Sprintf("%s-%d.log", w.name, w.starts)), args...)
	if err != nil {
		t.Fatal(err)
	}
	w.agent = p
}

// stop stops w's agent, which stops its Envoy first (SIGTERM: the way a
// pod's sidecar goes away).
func (w *workload) stop() {
	if w.agent != nil {
		w.agent.stop(15 * time.Second)
	}
}

// waitReady waits until w's Envoy is live and presents a certificate.
func (w *workload) waitReady(d time.Duration) {
	t := w.m.t
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		body, err := envoy.AdminGet(ctx, w.admin(), "/ready")
		if err == nil && strings.TrimSpace(body) == "LIVE" {
			var serial string
			certs, err2 := envoy.AdminGet(ctx, w.admin(), "/certs")
			if err2 == nil {
				serial, err2 = envoy.CertSerial(certs, w.id())
			}
			if err2 == nil && serial != "" {
				cancel()
				return
			}
			last = fmt.Sprintf("live, but no certificate for %s in /certs (%v)", w.id(), err2)
		} else {
			last = fmt.Sprintf("%q %v", strings.TrimSpace(body), err)
		}
		cancel()
		select {
		case <-w.agent.done:
			t.Fatalf("the %s exited: %v\n%s", w.agent.name, w.agent.err, w.agent.tail(40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Envoy of %s not ready within %s (last: %s)\n%s", w.name, d, last, w.agent.tail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitCallsPass waits until one HTTP call and one TCP connection of every
// pair of the topology has gone through: the configuration is complete
// everywhere.
func (m *mesh) waitCallsPass(d time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(d)
	for _, p := range m.pairs() {
		for {
			errH := p.httpOnce(newKeepAliveClient(), 0)
			errT := p.tcpOnce(0)
			if errH == nil && errT == nil {
				break
			}
			if time.Now().After(deadline) {
				m.t.Fatalf("%s: calls do not go through within %s: http: %v; tcp: %v", p, d, errH, errT)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// stop stops everything; on failure it shows the end of every log.
func (m *mesh) stop() {
	var wg sync.WaitGroup
	for _, w := range m.workloads {
		wg.Add(1)
		go func() { defer wg.Done(); w.stop() }()
	}
	wg.Wait()
	if m.cp != nil {
		m.cp.stop(10 * time.Second)
	}
	for _, w := range m.workloads {
		if w.app != nil {
			w.app.Close()
		}
	}
	if m.t.Failed() {
		for _, w := range m.workloads {
			if w.agent != nil {
				m.t.Logf("--- %s: %s ---\n%s", w.agent.name, w.agent.logPath, w.agent.tail(60))
			}
		}
		if m.cp != nil {
			m.t.Logf("--- %s: %s ---\n%s", m.cp.name, m.cp.logPath, m.cp.tail(100))
		}
	}
}

// proc is a bulwark process the test started, its output in a log file.
type proc struct {
	name, logPath string
	cmd           *exec.Cmd
	logf          *os.File
	done          chan struct{}
	err           error
}

func startProc(name, logPath string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bulwarkBin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group (a signal meant for the test does not reach
	// it), and killed with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, logf: f, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM and waits for the process to exit, killing it after
// grace. A process the test froze (freeze) is woken first.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// freeze stops the process (SIGSTOP) without ending it: its connections
// stay open, it does nothing. thaw (SIGCONT) lets it go on.
func (p *proc) freeze() { _ = p.cmd.Process.Signal(syscall.SIGSTOP) }
func (p *proc) thaw()   { _ = p.cmd.Process.Signal(syscall.SIGCONT) }

// running reports whether the process has not exited.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// tail returns the last n lines of the process's log, leaving out the
// access log of its Envoy.
func (p *proc) tail(n int) string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "{") {
			continue // Envoy's access log
		}
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// logContains reports whether the process's log has a line containing s.
func (p *proc) logContains(s string) bool {
	b, err := os.ReadFile(p.logPath)
	return err == nil && bytes.Contains(b, []byte(s))
}
