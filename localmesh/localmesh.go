// Package localmesh runs a whole mesh on one machine's loopback: the
// control plane, and for every workload in the mesh file a demo app and a
// real Envoy sidecar configured only by the control plane. It is what
// `bulwark up` (and `make run`) starts, and what the end-to-end tests use.
//
// It follows the mesh file: a workload added to the file gets its app and
// sidecar started, a removed one has them stopped. A changed workload has
// only its app restarted; its sidecar picks up the change over xDS.
package localmesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/agent"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
)

// AdminPort is the port of each sidecar's admin interface on its
// workload's local address.
const AdminPort = 15000

// Config configures a local mesh.
type Config struct {
	// MeshPaths are the mesh files or directories. Required.
	MeshPaths []string
	// XDSAddress and HTTPAddress are the control plane's listeners.
	// Defaults: 127.0.0.1:15010 and 127.0.0.1:15014. Port 0 picks one.
	XDSAddress  string
	HTTPAddress string
	// EnvoyBin is the Envoy binary; empty means envoy.Find.
	EnvoyBin string
	// WorkDir holds bootstraps and Envoy logs; empty means a new
	// temporary directory, removed on Stop.
	WorkDir string
	// EnvoyLogLevel defaults to warning.
	EnvoyLogLevel string
	// ReadyTimeout bounds how long Start waits for every sidecar to have
	// its configuration. Defaults to 30s.
	ReadyTimeout time.Duration
	// Debounce is passed to the control plane.
	Debounce time.Duration
	// CADir holds the mesh's CA; empty means WorkDir/ca. A CA missing
	// there is created: this is a demo mesh. (`bulwark serve` never
	// creates a CA.)
	CADir string
	// CertTTL is the lifetime the agents ask for; zero is the CA default.
	CertTTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Mesh is a running local mesh.
type Mesh struct {
	cfg     Config
	log     *slog.Logger
	cp      *controlplane.ControlPlane
	ownsDir bool
	sockDir string // short path for SDS sockets (Unix socket paths are short)

	mu        sync.Mutex
	workloads map[string]*workload
	stopped   bool
}

// workload is the app and sidecar of one workload.
type workload struct {
	w          *model.Workload
	appShape   string
	envoyShape string
	app        *demoapp.App
	sidecar    *sidecar
	logPath    string
	upstreams  map[string]string
}

// sidecar is a workload's agent and the Envoy it runs.
type sidecar struct {
	agent  *agent.Agent
	cancel context.CancelFunc
	done   chan error
	logf   *os.File
}

func (s *sidecar) envoy() *envoy.Process {
	if s == nil {
		return nil
	}
	return s.agent.Envoy()
}

func (s *sidecar) stop() {
	s.cancel()
	<-s.done
	s.logf.Close()
}

// Start brings the mesh up and waits until every sidecar has its
// configuration. It keeps following the mesh file until ctx ends or Stop.
func Start(ctx context.Context, cfg Config) (*Mesh, error) {
	if cfg.XDSAddress == "" {
		cfg.XDSAddress = "127.0.0.1:15010"
	}
	if cfg.HTTPAddress == "" {
		cfg.HTTPAddress = "127.0.0.1:15014"
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.EnvoyBin == "" {
		bin, err := envoy.Find()
		if err != nil {
			return nil, err
		}
		cfg.EnvoyBin = bin
	}
	m := &Mesh{cfg: cfg, log: cfg.Logger.With("component", "localmesh"), workloads: map[string]*workload{}}
	if cfg.WorkDir == "" {
		dir, err := os.MkdirTemp("", "bulwark-local-")
		if err != nil {
			return nil, err
		}
		m.cfg.WorkDir, m.ownsDir = dir, true
	} else if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return nil, err
	}

	if m.cfg.CADir == "" {
		m.cfg.CADir = filepath.Join(m.cfg.WorkDir, "ca")
	}
	if err := ensureCA(ctx, m.cfg.CADir, cfg.MeshPaths); err != nil {
		m.cleanup()
		return nil, err
	}
	sock, err := os.MkdirTemp("", "bw-sds-")
	if err != nil {
		m.cleanup()
		return nil, err
	}
	m.sockDir = sock
	cp, err := controlplane.Start(ctx, controlplane.Config{
		MeshPaths: cfg.MeshPaths, XDSAddress: cfg.XDSAddress, HTTPAddress: cfg.HTTPAddress,
		Logger: cfg.Logger, Debounce: cfg.Debounce, CADir: m.cfg.CADir,
	})
	if err != nil {
		m.cleanup()
		return nil, err
	}
	m.cp = cp

	snap := cp.Store.Snapshot()
	if err := m.reconcile(snap); err != nil {
		m.Stop()
		return nil, err
	}
	if err := m.WaitReady(ctx); err != nil {
		m.Stop()
		return nil, err
	}
	go m.follow(ctx, snap)
	return m, nil
}

// ControlPlane returns the embedded control plane.
func (m *Mesh) ControlPlane() *controlplane.ControlPlane { return m.cp }

// WorkDir returns the directory with bootstraps and Envoy logs.
func (m *Mesh) WorkDir() string { return m.cfg.WorkDir }

// WaitReady waits until every running sidecar has its certificate and
// its Envoy reports LIVE (which it does once its configuration arrived).
func (m *Mesh) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.ReadyTimeout)
	defer cancel()
	m.mu.Lock()
	cars := map[string]*sidecar{}
	for k, w := range m.workloads {
		if w.sidecar != nil {
			cars[k] = w.sidecar
		}
	}
	m.mu.Unlock()
	var errs []error
	for k, sc := range cars {
		select {
		case <-sc.agent.Ready():
		case err := <-sc.done:
			sc.done <- err
			errs = append(errs, fmt.Errorf("sidecar of %s: agent stopped: %v (log: %s)", k, err, m.logPath(k)))
			continue
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("sidecar of %s: no certificate: %w (log: %s)", k, ctx.Err(), m.logPath(k)))
			continue
		}
		if err := sc.envoy().WaitReady(ctx); err != nil {
			errs = append(errs, fmt.Errorf("sidecar of %s: %w (log: %s)", k, err, m.logPath(k)))
		}
	}
	return errors.Join(errs...)
}

func (m *Mesh) logPath(key string) string {
	return filepath.Join(m.cfg.WorkDir, strings.ReplaceAll(key, "/", ".")+".envoy.log")
}

// follow reconciles the running processes with the model after every
// change to workloads or services, until ctx ends.
func (m *Mesh) follow(ctx context.Context, snap *model.Snapshot) {
	for {
		w := snap.Watch()
		select {
		case <-ctx.Done():
			m.stopAll()
			return
		case <-w[model.TableWorkloads]:
		case <-w[model.TableServices]:
		case <-m.stopCh():
			return
		}
		snap = m.cp.Store.Snapshot()
		if err := m.reconcile(snap); err != nil {
			m.log.Error("local mesh: could not apply the change", "err", err)
		}
	}
}

func (m *Mesh) stopCh() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return m.cp.Done()
}

// reconcile starts, restarts and stops apps and sidecars to match snap.
func (m *Mesh) reconcile(snap *model.Snapshot) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	want := map[string]*model.Workload{}
	for _, w := range snap.Workloads() {
		want[w.Key()] = w
	}
	for k, rw := range m.workloads {
		if _, ok := want[k]; !ok {
			m.log.Info("workload removed from the mesh file: stopping its app and sidecar", "workload", k)
			rw.stop()
			delete(m.workloads, k)
		}
	}
	var errs []error
	for _, k := range sortedKeys(want) {
		w := want[k]
		app, env, upstreams := shapes(snap, w)
		rw := m.workloads[k]
		if rw == nil {
			rw = &workload{w: w}
			m.workloads[k] = rw
			m.log.Info("starting workload", "workload", k)
		}
		if rw.appShape != app.shape {
			if rw.app != nil {
				rw.app.Close()
				rw.app = nil
			}
			a, err := demoapp.Start(demoapp.Config{Name: w.Name, HTTP: app.http, TCP: app.tcp, Upstreams: upstreams, Logger: m.cfg.Logger})
			if err != nil {
				errs = append(errs, err)
				rw.appShape = ""
			} else {
				rw.app, rw.appShape, rw.upstreams = a, app.shape, upstreams
			}
		}
		rw.w = w
		if rw.envoyShape != env {
			if rw.sidecar != nil {
				rw.sidecar.stop()
				rw.sidecar = nil
			}
			sc, err := m.startSidecar(w)
			if err != nil {
				errs = append(errs, fmt.Errorf("sidecar of %s: %w", k, err))
				rw.envoyShape = ""
			} else {
				rw.sidecar, rw.envoyShape, rw.logPath = sc, env, m.logPath(k)
			}
		}
	}
	return errors.Join(errs...)
}

// startSidecar gives a workload a join token and starts its agent, which
// gets the workload's certificate, serves it to Envoy over SDS, writes
// the bootstrap and runs Envoy.
func (m *Mesh) startSidecar(w *model.Workload) (*sidecar, error) {
	token, err := m.cp.Tokens.Create(w.Key(), 10*time.Minute)
	if err != nil {
		return nil, err
	}
	base := filepath.Join(m.cfg.WorkDir, w.Namespace+"."+w.Name)
	logf, err := os.OpenFile(base+".envoy.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	a, err := agent.New(agent.Config{
		Workload:       w.Key(),
		ControlPlane:   m.cp.XDSAddr.String(),
		ControlPlaneID: m.cp.Identity,
		TrustBundle:    m.cp.CA.Roots(),
		JoinToken:      token,
		CertTTL:        m.cfg.CertTTL,
		SDSSocket:      filepath.Join(m.sockDir, w.Namespace+"."+w.Name+".sock"),
		BootstrapPath:  base + ".bootstrap.yaml",
		AdminAddress:   net.JoinHostPort(w.LocalAddress, strconv.Itoa(AdminPort)),
		Envoy:          &agent.EnvoyConfig{Bin: m.cfg.EnvoyBin, LogLevel: m.cfg.EnvoyLogLevel, Stdout: logf, Stderr: logf},
		Logger:         m.cfg.Logger,
	})
	if err != nil {
		logf.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	sc := &sidecar{agent: a, cancel: cancel, done: make(chan error, 1), logf: logf}
	go func() { sc.done <- a.Run(ctx) }()
	return sc, nil
}

// Agent returns the agent of a running workload, or nil.
func (m *Mesh) Agent(key string) *agent.Agent {
	m.mu.Lock()
	defer m.mu.Unlock()
	if w := m.workloads[key]; w != nil && w.sidecar != nil {
		return w.sidecar.agent
	}
	return nil
}

func (w *workload) stop() {
	if w.sidecar != nil {
		w.sidecar.stop()
	}
	if w.app != nil {
		w.app.Close()
	}
}

type appShape struct {
	http, tcp []string
	shape     string
}

// shapes returns what the app of w listens on and calls, and what its
// sidecar process depends on (not its configuration: that comes over xDS).
func shapes(snap *model.Snapshot, w *model.Workload) (appShape, string, map[string]string) {
	var a appShape
	for _, p := range snap.InboundPorts(w) {
		addr := net.JoinHostPort(w.LocalAddress, strconv.Itoa(int(p.Port)))
		if p.Protocol == model.ProtocolHTTP {
			a.http = append(a.http, addr)
		} else {
			a.tcp = append(a.tcp, addr)
		}
	}
	sort.Strings(a.http)
	sort.Strings(a.tcp)
	upstreams := map[string]string{}
	for _, u := range w.Upstreams {
		svc := snap.Service(u.Namespace, u.Service)
		if svc == nil || svc.Port(u.Port) == nil || svc.Port(u.Port).Protocol != model.ProtocolHTTP {
			continue
		}
		name := UpstreamName(w, u)
		upstreams[name] = "http://" + net.JoinHostPort(w.LocalAddress, strconv.Itoa(int(u.LocalPort)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "http=%v tcp=%v", a.http, a.tcp)
	for _, k := range sortedKeys(upstreams) {
		fmt.Fprintf(&b, " %s=%s", k, upstreams[k])
	}
	a.shape = b.String()
	return a, w.LocalAddress + " " + w.Key(), upstreams
}

// UpstreamName is the name the demo app of w knows upstream u by, as in
// GET /call/<name>/...: the service name, qualified with its namespace
// when it is in another one and with the port when the workload calls
// several ports of it.
func UpstreamName(w *model.Workload, u model.Upstream) string {
	name := u.Service
	if u.Namespace != w.Namespace {
		name += "." + u.Namespace
	}
	n := 0
	for _, o := range w.Upstreams {
		if o.Service == u.Service && o.Namespace == u.Namespace {
			n++
		}
	}
	if n > 1 {
		name += ":" + strconv.Itoa(int(u.Port))
	}
	return name
}

// Stop stops every sidecar and app and then the control plane.
func (m *Mesh) Stop() error {
	m.stopAll()
	var err error
	if m.cp != nil {
		err = m.cp.Stop()
	}
	m.cleanup()
	return err
}

func (m *Mesh) stopAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	m.stopped = true
	var wg sync.WaitGroup
	for _, w := range m.workloads {
		wg.Add(1)
		go func() { defer wg.Done(); w.stop() }()
	}
	wg.Wait()
}

func (m *Mesh) cleanup() {
	if m.ownsDir {
		_ = os.RemoveAll(m.cfg.WorkDir)
	}
	if m.sockDir != "" {
		_ = os.RemoveAll(m.sockDir)
	}
}

// ensureCA creates a demo CA in dir for the mesh's trust domain unless
// dir already holds one.
func ensureCA(ctx context.Context, dir string, meshPaths []string) error {
	if _, err := os.Stat(filepath.Join(dir, ca.CertFile)); err == nil {
		return nil
	}
	st, err := meshfile.Load(ctx, meshPaths)
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(st.Mesh.TrustDomain)
	if err != nil {
		return err
	}
	if err := trust.Init(ca.InitConfig{Dir: dir, TrustDomain: td}, "bulwark up (a new CA for the local mesh)"); err != nil {
		return err
	}
	// A new CA: no proxy was ever connected, so none to wait for.
	return controlplane.InitRoster(dir)
}

// Wait blocks until the control plane stops (ctx ended, or it failed).
func (m *Mesh) Wait() error {
	if m.cp == nil {
		return nil
	}
	<-m.cp.Done()
	return m.cp.Wait()
}

// Sidecar describes one running workload for callers that want to talk
// to it (the banner, tests).
type Sidecar struct {
	Workload  *model.Workload
	Admin     string            // admin interface, host:port
	EnvoyPID  int               // the sidecar's process
	Log       string            // Envoy's log (access log included)
	Upstreams map[string]string // app's upstream name -> URL of its sidecar's listener
}

// Sidecars returns the running workloads, sorted by key.
func (m *Mesh) Sidecars() []Sidecar {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Sidecar
	for _, k := range sortedKeys(m.workloads) {
		w := m.workloads[k]
		sc := Sidecar{
			Workload: w.w, Admin: net.JoinHostPort(w.w.LocalAddress, strconv.Itoa(AdminPort)),
			Log: w.logPath, Upstreams: w.upstreams,
		}
		if p := w.sidecar.envoy(); p != nil {
			sc.EnvoyPID = p.PID()
		}
		out = append(out, sc)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
