package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/bulwarkmesh/bulwark/bench/gen"
	"github.com/bulwarkmesh/bulwark/bench/sidecar"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// Stats is what a server process reports of itself.
type Stats struct {
	RSS        uint64 `json:"rss"`     // bytes resident now
	PeakRSS    uint64 `json:"peakRSS"` // high-water mark
	HeapInuse  uint64 `json:"heapInuse"`
	StackInuse uint64 `json:"stackInuse"`
	Goroutines int    `json:"goroutines"`
}

func selfStats() Stats {
	var st Stats
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && (f[0] == "VmRSS:" || f[0] == "VmHWM:") {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				if f[0] == "VmRSS:" {
					st.RSS = kb * 1024
				} else {
					st.PeakRSS = kb * 1024
				}
			}
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st.HeapInuse, st.StackInuse = ms.HeapInuse, ms.StackInuse
	st.Goroutines = runtime.NumGoroutine()
	return st
}

// controlPlaneID is the identity the bench's control plane serves with.
var controlPlaneID = contract.ControlPlaneID(spiffeid.RequireTrustDomainFromString(gen.TrustDomain))

// serve is the server process: it serves ADS for a generated mesh, with
// Bulwark's server or the baseline, and takes commands on stdin:
//
//	full <gen>            replace the mesh with generation gen
//	endpoint <gen> <k>    generation gen with one endpoint moved (k)
//	stats                 print Stats as JSON
//
// It prints "ready <addr>" once serving, and "ok" after each change.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	impl := fs.String("impl", "bulwark", "bulwark or baseline")
	spec := specFlags(fs)
	caDir := fs.String("ca-dir", "", "CA directory (bulwark)")
	plaintext := fs.Bool("plaintext", false, "bulwark: serve without TLS, taking each stream's identity from its metadata (bench only)")
	debounce := fs.Duration("debounce", 100*time.Millisecond, "how long the model must be quiet before a publish")
	epDebounce := fs.Duration("endpoint-debounce", 20*time.Millisecond, "the same when only endpoints changed")
	_ = fs.Parse(args)
	raiseFileLimit()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store := model.NewStore()
	if _, err := store.ReplaceState(spec.State(0)); err != nil {
		return err
	}
	ctx := context.Background()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var g *grpc.Server
	switch *impl {
	case "bulwark":
		authority, err := ca.Load(ca.LoadConfig{Dir: *caDir, Config: ca.Config{TrustDomain: controlPlaneID.TrustDomain()}})
		if err != nil {
			return err
		}
		own, err := authority.NewSource(ctx, controlPlaneID, 24*time.Hour, log)
		if err != nil {
			return err
		}
		identify := spiffetls.PeerID
		// The connection limits of `bulwark serve`, with the caps raised:
		// every simulated sidecar connects from 127.0.0.1.
		limits := controlplane.Limits{MaxConnections: max(controlplane.DefaultMaxConnections, 2*spec.Proxies),
			MaxConnectionsPerSource: 2 * spec.Proxies}
		lis = limits.Listener(lis, log, nil)
		opts := append(server.ServerOptions(), grpc.MaxConcurrentStreams(1<<16))
		opts = append(opts, limits.ServerOptions()...)
		if *plaintext {
			// Isolates the xDS server from TLS, to compare it with the
			// baseline on equal terms. Bulwark itself never serves so.
			identify = metadataIdentity
		} else {
			opts = append(opts, grpc.Creds(credentials.NewTLS(spiffetls.ServerConfig(own, own, controlPlaneID.TrustDomain()))))
		}
		srv, err := server.New(server.Config{Store: store, Logger: log, Identify: identify, Debounce: *debounce, EndpointDebounce: *epDebounce})
		if err != nil {
			return err
		}
		g = grpc.NewServer(opts...)
		srv.Register(ctx, g)
		go func() { _ = srv.Run(ctx) }()
	case "baseline":
		b := &baseline{spec: *spec, store: store, cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil),
			debounce: *debounce, epDebounce: *epDebounce, log: log}
		g = grpc.NewServer(grpc.MaxConcurrentStreams(1 << 16))
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, b.cache, nil))
		if err := b.publish(); err != nil {
			return err
		}
		go b.run()
	default:
		return fmt.Errorf("unknown -impl %q", *impl)
	}
	go func() { _ = g.Serve(lis) }()
	fmt.Printf("ready %s\n", lis.Addr())

	// BULWARK_BENCH_PROFILE=<dir> profiles the server's CPU until its
	// stdin closes.
	if dir := os.Getenv("BULWARK_BENCH_PROFILE"); dir != "" {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.cpu.pprof", *impl, os.Getpid())))
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "full", "endpoint":
			n, _ := strconv.Atoi(f[1])
			st := spec.State(n)
			if f[0] == "endpoint" {
				k, _ := strconv.Atoi(f[2])
				gen.MoveOneEndpoint(st, k)
			}
			if _, err := store.ReplaceState(st); err != nil {
				return err
			}
			fmt.Println("ok")
		case "heap":
			// With BULWARK_BENCH_PROFILE, write a heap profile there.
			if dir := os.Getenv("BULWARK_BENCH_PROFILE"); dir != "" {
				f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.heap.pprof", *impl, os.Getpid())))
				if err != nil {
					return err
				}
				if err := pprof.WriteHeapProfile(f); err != nil {
					return err
				}
				f.Close()
			}
			fmt.Println("ok")
		case "stats":
			// Measured as it stands: no forced collection, no memory
			// handed back to the kernel first.
			b, _ := json.Marshal(selfStats())
			fmt.Println(string(b))
		case "settled":
			// What the server holds: garbage collected and free memory
			// handed back to the kernel, as the runtime does by itself
			// given a few quiet minutes (it collects at least every two).
			// Two collections, so buffers idle in sync.Pools go too.
			runtime.GC()
			debug.FreeOSMemory()
			b, _ := json.Marshal(selfStats())
			fmt.Println(string(b))
		default:
			return fmt.Errorf("unknown command %q", f[0])
		}
	}
	return in.Err()
}

func metadataIdentity(ctx context.Context) (spiffeid.ID, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(sidecar.IdentityHeader)
	if len(v) != 1 {
		return spiffeid.ID{}, errors.New("no identity metadata")
	}
	return spiffeid.FromString(v[0])
}

// baseline serves the same resources as Bulwark from stock
// go-control-plane: a SnapshotCache with one snapshot per node, set
// for every node after every change.
type baseline struct {
	spec       gen.Spec
	store      *model.Store
	cache      cachev3.SnapshotCache
	debounce   time.Duration
	epDebounce time.Duration
	log        *slog.Logger
}

func (b *baseline) run() {
	for {
		changed := b.store.Snapshot().Watch()
		waitAny(changed)
		// The same coalescing as Bulwark: wait for the model to be quiet,
		// for less when only endpoints changed.
		for {
			wait := b.debounce
			if onlyEndpoints(changed) {
				wait = b.epDebounce
			}
			more := b.store.Snapshot().Watch()
			if !waitAnyFor(more, wait) {
				break
			}
		}
		if err := b.publish(); err != nil {
			b.log.Error("baseline publish", "err", err)
		}
	}
}

func (b *baseline) publish() error {
	return b.spec.TranslateSnapshot(b.store.Snapshot(), func(i int, _ *model.Workload, parts []*xds.Part, cfg fanout.Config) error {
		r := xds.Union(parts...)
		// The versions Bulwark would give the same content, so one
		// harness can tell when either has converged.
		v := cfg.Versions()
		s := &cachev3.Snapshot{}
		s.Resources[types.Cluster] = cachev3.NewResources(v[fanout.Clusters], asResources(r.Clusters))
		s.Resources[types.Endpoint] = cachev3.NewResources(v[fanout.Endpoints], asResources(r.Endpoints))
		s.Resources[types.Listener] = cachev3.NewResources(v[fanout.Listeners], asResources(r.Listeners))
		s.Resources[types.Route] = cachev3.NewResources(v[fanout.Routes], asResources(r.Routes))
		return b.cache.SetSnapshot(context.Background(), gen.NodeID(i), s)
	})
}

func asResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

// onlyEndpoints reports whether, of the tables watched, only endpoints
// changed.
func onlyEndpoints(watch map[string]<-chan struct{}) bool {
	for t, ch := range watch {
		select {
		case <-ch:
			if t != model.TableEndpoints {
				return false
			}
		default:
		}
	}
	return true
}

func waitAny(chans map[string]<-chan struct{}) { waitAnyFor(chans, -1) }

// waitAnyFor waits for one of chans to close (true) or d to pass
// (false); d < 0 waits forever.
func waitAnyFor(chans map[string]<-chan struct{}, d time.Duration) bool {
	var cases []reflect.SelectCase
	if d >= 0 {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(time.After(d))})
	}
	for _, ch := range chans {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
	}
	i, _, _ := reflect.Select(cases)
	return d < 0 || i > 0
}
