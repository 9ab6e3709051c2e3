package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/bench/gen"
	"github.com/bulwarkmesh/bulwark/bench/sidecar"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
)

// Figure is one measured figure, as results.json holds it.
type Figure struct {
	Name   string    `json:"name"`
	Unit   string    `json:"unit"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"`
	// BaselineMedian is the baseline's median on the same input in the
	// same run, when there is a baseline; Ratio is baseline / Bulwark for
	// times and memory (how many times better), Bulwark / baseline for
	// rates.
	BaselineMedian *float64  `json:"baselineMedian,omitempty"`
	BaselineRuns   []float64 `json:"baselineRuns,omitempty"`
	Ratio          *float64  `json:"ratio,omitempty"`
	Note           string    `json:"note,omitempty"`
}

type options struct {
	short      bool
	out        string
	reps       int
	only       string
	envoyBin   string
	timeout    time.Duration
	debounce   time.Duration
	epDebounce time.Duration
	baseline   bool
	impls      string
	chart      bool
	chartReps  int
}

func run(args []string) error {
	fs := flag.NewFlagSet("bulwark-bench", flag.ExitOnError)
	var o options
	fs.BoolVar(&o.short, "short", false, "smoke test: small sizes, one run each, no timing goals")
	fs.StringVar(&o.out, "out", "bench/out", "directory for results.json, charts and server logs")
	fs.IntVar(&o.reps, "reps", 5, "runs per figure")
	fs.StringVar(&o.only, "only", "", "comma-separated figure groups to run: convergence, scale, ca, envoy (default all)")
	fs.StringVar(&o.envoyBin, "envoy", os.Getenv("ENVOY_BIN"), "Envoy binary for the real-Envoy figure")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "how long to wait for convergence before calling a run failed")
	fs.DurationVar(&o.debounce, "debounce", 100*time.Millisecond, "the servers' coalescing window (Bulwark's default)")
	fs.DurationVar(&o.epDebounce, "endpoint-debounce", 20*time.Millisecond, "the servers' coalescing window when only endpoints changed (Bulwark's default)")
	fs.BoolVar(&o.baseline, "baseline", true, "measure the baseline too")
	fs.StringVar(&o.impls, "impls", "bulwark,bulwark-plaintext,baseline", "servers the convergence figures measure")
	fs.IntVar(&o.chartReps, "scale-reps", 2, "full changes per point of the scale sweep")
	replot := fs.String("replot", "", "only draw the scale charts again, from this results.json")
	_ = fs.Parse(args)
	raiseFileLimit()
	limitHarnessMemory()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	want := func(group string) bool {
		return o.only == "" || strings.Contains(","+o.only+",", ","+group+",")
	}
	h := &harness{o: o}
	if *replot != "" {
		return h.replot(*replot)
	}
	caDir, err := os.MkdirTemp("", "bulwark-bench-ca-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(caDir)
	if err := ca.Init(ca.InitConfig{Dir: caDir, TrustDomain: controlPlaneID.TrustDomain()}); err != nil {
		return err
	}
	h.caDir = caDir
	fmt.Printf("machine: %s\n", machine())
	var figures []Figure
	path := filepath.Join(o.out, "results.json")
	// Written after every group, so a long run that stops part way
	// keeps what it measured.
	save := func() error {
		b, err := json.MarshalIndent(map[string]any{"machine": machine(), "command": "bulwark-bench " + strings.Join(args, " "),
			"date": time.Now().UTC().Format(time.RFC3339), "figures": figures}, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(path, append(b, '\n'), 0o644)
	}
	for _, g := range []struct {
		name string
		run  func() ([]Figure, error)
	}{
		{"convergence", h.convergence}, {"ca", h.caFigure}, {"envoy", h.envoyFigure}, {"scale", h.scale},
	} {
		if !want(g.name) || (g.name == "scale" && o.short) {
			continue
		}
		f, err := g.run()
		if err != nil {
			return err
		}
		figures = append(figures, f...)
		if err := save(); err != nil {
			return err
		}
	}
	if err := save(); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s\n", path)
	return nil
}

type harness struct {
	o     options
	caDir string
	// sources caches the sidecars' identities, by service account.
	sources map[string]*ca.Source
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				model = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs, %s/%s, %s", model, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// child is a server process.
type child struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	addr   string
	log    string
	exited chan struct{}
}

func (h *harness) startChild(impl string, spec gen.Spec) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(h.o.out, fmt.Sprintf("%s-%dx%d.log", impl, spec.Proxies, spec.Services))
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	server, plaintext := impl, false
	if impl == "bulwark-plaintext" {
		server, plaintext = "bulwark", true
	}
	cmd := exec.Command(self, "serve", "-impl", server, fmt.Sprintf("-plaintext=%t", plaintext), "-services", fmt.Sprint(spec.Services), "-endpoints", fmt.Sprint(spec.Endpoints),
		"-proxies", fmt.Sprint(spec.Proxies), "-ca-dir", h.caDir, "-debounce", h.o.debounce.String(), "-endpoint-debounce", h.o.epDebounce.String())
	cmd.Stderr = logf
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	logf.Close()
	c := &child{cmd: cmd, in: in, out: bufio.NewScanner(outp), log: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.exited) }()
	c.out.Buffer(make([]byte, 1<<20), 1<<20)
	line, err := c.line()
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%s server: %w (see %s)", impl, err, logPath)
	}
	addr, ok := strings.CutPrefix(line, "ready ")
	if !ok {
		c.stop()
		return nil, fmt.Errorf("%s server said %q (see %s)", impl, line, logPath)
	}
	c.addr = addr
	return c, nil
}

func (c *child) line() (string, error) {
	if !c.out.Scan() {
		if err := c.out.Err(); err != nil {
			return "", err
		}
		return "", io.ErrUnexpectedEOF
	}
	return c.out.Text(), nil
}

func (c *child) do(cmd string) (string, error) {
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		return "", err
	}
	return c.line()
}

func (c *child) stats() (Stats, error) { return c.statsAfter("stats") }

// settled is stats after a collection that hands free memory back.
func (c *child) settled() (Stats, error) { return c.statsAfter("settled") }

func (c *child) statsAfter(cmd string) (Stats, error) {
	line, err := c.do(cmd)
	if err != nil {
		return Stats{}, err
	}
	var s Stats
	return s, json.Unmarshal([]byte(line), &s)
}

func (c *child) stop() {
	c.in.Close()
	select {
	case <-c.exited: // it ends when its stdin closes
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// tlsFor returns sidecar i's mTLS configuration: an SVID of its
// workload's identity, as its agent would hold.
func (h *harness) tlsFor(spec gen.Spec) (func(i int) *tls.Config, error) {
	authority, err := ca.Load(ca.LoadConfig{Dir: h.caDir, Config: ca.Config{TrustDomain: controlPlaneID.TrustDomain()}})
	if err != nil {
		return nil, err
	}
	if h.sources == nil {
		h.sources = map[string]*ca.Source{}
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	configs := make([]*tls.Config, spec.Proxies)
	for i := range configs {
		sa := spec.ServiceAccount(i)
		src := h.sources[sa]
		if src == nil {
			id := spiffeid.RequireFromPath(controlPlaneID.TrustDomain(), "/ns/"+gen.Namespace+"/sa/"+sa)
			src, err = authority.NewSource(context.Background(), id, 24*time.Hour, quiet)
			if err != nil {
				return nil, err
			}
			h.sources[sa] = src
		}
		configs[i] = spiffetls.ClientConfig(src, src, controlPlaneID)
	}
	return func(i int) *tls.Config { return configs[i] }, nil
}

// targets returns the versions each sidecar must ACK once st is served.
func targets(spec gen.Spec, st *model.State) ([]sidecar.Versions, error) {
	out := make([]sidecar.Versions, spec.Proxies)
	err := spec.Translate(st, func(i int, _ *model.Workload, _ []*xds.Part, cfg fanout.Config) error {
		out[i] = cfg.Versions()
		return nil
	})
	return out, err
}

// result is what one server implementation did on one input.
type result struct {
	Storm, Full, Endpoint []float64 // seconds
	RSSPerProxy           float64   // bytes per connected proxy
	HeapPerProxy          float64
	// The same after a collection that hands free memory back, before
	// and after the storm (on the last storm's server).
	SettledRSSPerProxy, SettledHeapPerProxy float64
	StackPerProxy                           float64
	GoroutinesPerProxy                      float64
	RSS, PeakRSS                            uint64
	BytesPerProxy                           float64 // response bytes a proxy receives to sync
	Errors                                  []string
	Failed                                  string
}

// measure runs storms (each a fresh server process), and on the first,
// memory, full changes and endpoint changes.
func (h *harness) measure(impl string, spec gen.Spec, storms, changes int) (*result, error) {
	res := &result{}
	cfg := sidecar.Config{}
	switch impl {
	case "bulwark":
		var err error
		if cfg.TLS, err = h.tlsFor(spec); err != nil {
			return nil, err
		}
	case "bulwark-plaintext":
		cfg.Identity = func(i int) string {
			return spiffeid.RequireFromPath(controlPlaneID.TrustDomain(), "/ns/"+gen.Namespace+"/sa/"+spec.ServiceAccount(i)).String()
		}
	}
	initial, err := targets(spec, spec.State(0))
	if err != nil {
		return nil, err
	}
	for r := 0; r < storms; r++ {
		c, err := h.startChild(impl, spec)
		if err != nil {
			return nil, err
		}
		fail := func(what string, t *sidecar.Tracker) {
			res.Failed = fmt.Sprintf("%s: %d targets not ACKed after %s", what, t.Pending(), h.o.timeout)
		}
		base, err := c.stats()
		if err != nil {
			c.stop()
			return nil, err
		}
		// The settled figures come from the last storm's server, so the
		// collection they force does not touch the first's "as it stands"
		// figures (with a single storm, the smoke test, both come from it).
		settledRun := r == storms-1
		var baseSettled Stats
		if settledRun {
			if baseSettled, err = c.settled(); err != nil {
				c.stop()
				return nil, err
			}
		}
		tr := sidecar.NewTracker(spec.Proxies)
		done := tr.Arm(initial)
		t0 := time.Now()
		cars := make([]*sidecar.Sidecar, 0, spec.Proxies)
		for i := 0; i < spec.Proxies; i++ {
			cfg.Addr = c.addr
			sc, err := sidecar.Start(cfg, tr, i, gen.NodeID(i))
			if err != nil {
				c.stop()
				return nil, err
			}
			cars = append(cars, sc)
		}
		stopAll := func() {
			for _, sc := range cars {
				sc.Stop()
			}
			c.stop()
		}
		if err := c.waitFor(done, tr, h.o.timeout); err != nil {
			stopAll()
			if err != errTimeout {
				return nil, err
			}
			fail("connect storm", tr)
			return res, nil
		}
		res.Storm = append(res.Storm, tr.Last().Sub(t0).Seconds())
		for _, e := range tr.Errors() {
			res.Errors = append(res.Errors, e.Error())
		}
		if settledRun {
			time.Sleep(2 * time.Second) // let the connections settle
			s, err := c.settled()
			if err != nil {
				stopAll()
				return nil, err
			}
			p := float64(spec.Proxies)
			res.SettledRSSPerProxy = (float64(s.RSS) - float64(baseSettled.RSS)) / p
			res.SettledHeapPerProxy = (float64(s.HeapInuse) - float64(baseSettled.HeapInuse)) / p
		}
		if r == 0 {
			res.BytesPerProxy = float64(tr.Bytes()) / float64(spec.Proxies)
			time.Sleep(2 * time.Second) // let the connections settle
			s, err := c.stats()
			if err != nil {
				stopAll()
				return nil, err
			}
			if _, err := c.do("heap"); err != nil {
				stopAll()
				return nil, err
			}
			p := float64(spec.Proxies)
			res.RSSPerProxy = (float64(s.RSS) - float64(base.RSS)) / p
			res.HeapPerProxy = (float64(s.HeapInuse) - float64(base.HeapInuse)) / p
			res.StackPerProxy = (float64(s.StackInuse) - float64(base.StackInuse)) / p
			res.GoroutinesPerProxy = float64(s.Goroutines-base.Goroutines) / p
			// change has the server apply cmd and waits until every
			// sidecar has ACKed what st gives it; false if it timed out.
			change := func(what string, st *model.State, cmd string) (float64, bool, error) {
				want, err := targets(spec, st)
				if err != nil {
					return 0, false, err
				}
				done := tr.Arm(want)
				t0 := time.Now()
				if _, err := c.do(cmd); err != nil {
					return 0, false, err
				}
				if err := c.waitFor(done, tr, h.o.timeout); err != nil {
					if err != errTimeout {
						return 0, false, err
					}
					fail(what, tr)
					return 0, false, nil
				}
				return tr.Last().Sub(t0).Seconds(), true, nil
			}
			current := 0
			for k := 1; k <= 2*changes; k++ {
				var secs float64
				var ok bool
				var err error
				if k <= changes {
					current = k
					secs, ok, err = change(fmt.Sprintf("full change %d", k), spec.State(k), fmt.Sprintf("full %d", k))
				} else {
					st := spec.State(current)
					gen.MoveOneEndpoint(st, k)
					secs, ok, err = change(fmt.Sprintf("endpoint change %d", k-changes), st, fmt.Sprintf("endpoint %d %d", current, k))
				}
				if err != nil || !ok {
					stopAll()
					if err != nil {
						return nil, err
					}
					return res, nil
				}
				if k <= changes {
					res.Full = append(res.Full, secs)
				} else {
					res.Endpoint = append(res.Endpoint, secs)
				}
			}
			s, err = c.stats()
			if err != nil {
				stopAll()
				return nil, err
			}
			res.RSS, res.PeakRSS = s.RSS, s.PeakRSS
			for _, e := range tr.Errors() {
				res.Errors = append(res.Errors, e.Error())
			}
		}
		stopAll()
	}
	return res, nil
}

// waitFor waits for done, for at most d, and not past the server's end
// or a sidecar's failure.
func (c *child) waitFor(done <-chan struct{}, t *sidecar.Tracker, d time.Duration) error {
	select {
	case <-done:
		return nil
	case <-c.exited:
		return fmt.Errorf("the server exited (see %s)", c.log)
	case <-t.Failed():
		return fmt.Errorf("a sidecar's stream failed: %v (server log: %s)", t.Errors()[0], c.log)
	case <-time.After(d):
		return errTimeout
	}
}

var errTimeout = errors.New("timed out")

// convergence is the headline: 1,000 proxies and 1,000 services.
func (h *harness) convergence() ([]Figure, error) {
	spec := gen.Spec{Services: 1000, Endpoints: 5, Proxies: 1000}
	storms, changes := 3, h.o.reps
	if h.o.short {
		spec = gen.Spec{Services: 50, Endpoints: 3, Proxies: 20}
		storms, changes = 1, 1
	}
	label := fmt.Sprintf("%d proxies x %d services x %d endpoints", spec.Proxies, spec.Services, spec.Endpoints)
	fmt.Printf("\n== convergence: %s\n", label)
	results := map[string]*result{}
	for _, impl := range strings.Split(h.o.impls, ",") {
		if impl == "baseline" && !h.o.baseline {
			continue
		}
		r, err := h.measure(impl, spec, storms, changes)
		if err != nil {
			return nil, err
		}
		report(impl, r)
		if r.Failed != "" || len(r.Errors) > 0 {
			return nil, fmt.Errorf("%s failed: %s; stream errors: %v", impl, r.Failed, r.Errors)
		}
		results[impl] = r
	}
	one := func(v float64) []float64 { return []float64{v} }
	metrics := []struct {
		name, unit, what string
		get              func(*result) []float64
	}{
		{"convergence_full_change", "s", "every service changed, until every proxy ACKed", func(r *result) []float64 { return r.Full }},
		{"convergence_one_endpoint", "s", "one endpoint moved, until every proxy ACKed", func(r *result) []float64 { return r.Endpoint }},
		{"connect_storm", "s", "every proxy connects at once to a fresh server, until all are in sync", func(r *result) []float64 { return r.Storm }},
		{"rss_per_proxy", "KiB", "server RSS after the storm minus before, per connected proxy", func(r *result) []float64 { return one(r.RSSPerProxy / 1024) }},
		{"heap_per_proxy", "KiB", "server heap in use after the storm minus before, per connected proxy", func(r *result) []float64 { return one(r.HeapPerProxy / 1024) }},
		{"settled_rss_per_proxy", "KiB", "as rss_per_proxy, each measured after a collection that hands free memory back", func(r *result) []float64 { return one(r.SettledRSSPerProxy / 1024) }},
		{"settled_heap_per_proxy", "KiB", "as heap_per_proxy, each measured after a collection that hands free memory back", func(r *result) []float64 { return one(r.SettledHeapPerProxy / 1024) }},
		{"stack_per_proxy", "KiB", "server goroutine stacks after the storm minus before, per connected proxy", func(r *result) []float64 { return one(r.StackPerProxy / 1024) }},
		{"goroutines_per_proxy", "goroutines", "server goroutines per connected proxy", func(r *result) []float64 { return one(r.GoroutinesPerProxy) }},
		{"peak_rss", "MiB", "server RSS high-water mark over the whole run", func(r *result) []float64 { return one(float64(r.PeakRSS) / (1 << 20)) }},
		{"config_per_proxy", "KiB", "response bytes a proxy receives to get in sync", func(r *result) []float64 { return one(r.BytesPerProxy / 1024) }},
	}
	var figs []Figure
	for _, impl := range []string{"bulwark", "bulwark-plaintext"} {
		suffix, how := "", "Bulwark over mTLS (as deployed) vs the baseline over plaintext"
		if impl == "bulwark-plaintext" {
			suffix, how = "_plaintext", "both over plaintext (identity from metadata, bench only)"
		}
		if results[impl] == nil {
			continue
		}
		for _, m := range metrics {
			var base []float64
			if b := results["baseline"]; b != nil {
				base = m.get(b)
			}
			figs = append(figs, figure(m.name+suffix, m.unit, label+": "+m.what+"; "+how, m.get(results[impl]), base, false))
		}
	}
	printFigures(figs)
	return figs, nil
}

func report(impl string, r *result) {
	fmt.Printf("%-8s storm %v  full %v  endpoint %v  rss/proxy %.0f KiB (settled %.0f)  heap/proxy %.0f KiB (settled %.0f)  stack/proxy %.0f KiB  goroutines/proxy %.1f  peak RSS %d MiB  errors %d %s\n",
		impl, secs(r.Storm), secs(r.Full), secs(r.Endpoint), r.RSSPerProxy/1024, r.SettledRSSPerProxy/1024, r.HeapPerProxy/1024, r.SettledHeapPerProxy/1024, r.StackPerProxy/1024, r.GoroutinesPerProxy,
		r.PeakRSS>>20, len(r.Errors), r.Failed)
}

func secs(v []float64) string {
	var parts []string
	for _, x := range v {
		parts = append(parts, fmt.Sprintf("%.3f", x))
	}
	return "[" + strings.Join(parts, " ") + "]s"
}

// figure summarizes runs; rate means bigger is better.
func figure(name, unit, note string, runs, baseline []float64, rate bool) Figure {
	f := Figure{Name: name, Unit: unit, Note: note, Runs: runs}
	f.Median, f.Min, f.Max = summarize(runs)
	if len(baseline) > 0 {
		m, _, _ := summarize(baseline)
		f.BaselineMedian, f.BaselineRuns = &m, baseline
		if f.Median != 0 && m != 0 {
			r := m / f.Median
			if rate {
				r = f.Median / m
			}
			f.Ratio = &r
		}
	}
	return f
}

func summarize(v []float64) (median, lo, hi float64) {
	if len(v) == 0 {
		return 0, 0, 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	median = s[n/2]
	if n%2 == 0 {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

func printFigures(figs []Figure) {
	fmt.Printf("%-24s %12s %12s %12s %8s %14s %8s\n", "figure", "median", "min", "max", "unit", "baseline", "ratio")
	for _, f := range figs {
		bm, ratio := "-", "-"
		if f.BaselineMedian != nil {
			bm = fmt.Sprintf("%.4g", *f.BaselineMedian)
		}
		if f.Ratio != nil {
			ratio = fmt.Sprintf("%.1fx", *f.Ratio)
		}
		fmt.Printf("%-24s %12.4g %12.4g %12.4g %8s %14s %8s\n", f.Name, f.Median, f.Min, f.Max, f.Unit, bm, ratio)
	}
}

// limitHarnessMemory keeps the harness's heap (its thousands of simulated
// sidecars, which at 10,000 services receive gigabytes at once) from
// growing to twice what it holds before the collector runs: with the
// server beside it, that would be more than the machine has. Only this
// process is limited; the servers it measures run with Go's defaults.
func limitHarnessMemory() {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				debug.SetMemoryLimit(kb * 1024 / 3)
			}
			return
		}
	}
}
