package server

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds"
)

// Config configures a Server.
type Config struct {
	// Store is the model to publish. Required.
	Store *model.Store
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Synced is closed once every source has written its initial state.
	// Nothing is published before. Nil means the store is already complete.
	Synced <-chan struct{}
	// Debounce is how long the model must stay quiet before a change is
	// published; changes within it are coalesced. Defaults to 100ms.
	Debounce time.Duration
	// MaxDelay bounds how long a steady stream of changes can hold back
	// a publish. Defaults to 1s.
	MaxDelay time.Duration
	// Secrets are the SDS secret names every proxy's local SDS server
	// provides; a listener or cluster naming another is withheld.
	// Defaults to xds.Secrets.
	Secrets []string
	// Identify returns the SPIFFE ID a stream's peer authenticated with
	// (its verified client certificate). Required: a stream without an
	// identity is refused, and a proxy only ever gets the configuration
	// of a workload with that identity.
	Identify func(ctx context.Context) (spiffeid.ID, error)
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
}

// Server serves ADS from the model. Create it with New, register it on a
// gRPC server with Register, and call Run.
type Server struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	cache cachev3.SnapshotCache
	xds   serverv3.Server

	mu      sync.Mutex
	streams map[int64]*stream      // open ADS streams
	proxies map[string]*proxyState // by node ID, while any stream is open

	// published is touched only by the Run goroutine.
	published map[string]*published
}

// published is what the cache holds for one proxy.
type published struct {
	proxy      *model.Proxy // the connection it was made for
	resources  *xds.Resources
	identities map[string][]string // xds.UpstreamIdentities when translated
	versions   [types.UnknownType]string
}

// New returns a server for cfg. It does nothing until Run.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Identify == nil {
		return nil, errors.New("server: Store and Identify are required")
	}
	if cfg.Secrets == nil {
		cfg.Secrets = xds.Secrets
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "xds"),
		m:         newMetrics(cfg.Registerer),
		streams:   map[int64]*stream{},
		proxies:   map[string]*proxyState{},
		published: map[string]*published{},
	}
	s.cache = cachev3.NewSnapshotCache(true, cachev3.IDHash{}, cacheLogger{s.log})
	return s, nil
}

// Register adds the aggregated discovery service to g. The server's
// context bounds the streams it serves.
func (s *Server) Register(ctx context.Context, g grpc.ServiceRegistrar) {
	s.xds = serverv3.NewServer(ctx, s.cache, &callbacks{s}, sotwOrdered())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// Run publishes the model until ctx ends: once the sources have synced,
// then after every coalesced change.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.Synced != nil {
		s.log.Info("waiting for sources to sync before publishing")
		select {
		case <-s.cfg.Synced:
		case <-ctx.Done():
			return nil
		}
	}
	snap := s.cfg.Store.Snapshot()
	all := map[string]bool{}
	for _, t := range model.Tables {
		all[t] = true
	}
	s.sync(ctx, snap, all)
	for {
		watch := snap.Watch()
		// An mTLS exception that runs out changes modes without any change
		// to the model: wake up then and translate everything again.
		var expiry <-chan time.Time
		var timer *time.Timer
		if at := model.NextExpiry(snap.Mesh(), snap.MTLSPolicies(), s.cfg.Now()); !at.IsZero() {
			timer = time.NewTimer(at.Sub(s.cfg.Now()))
			expiry = timer.C
		}
		changedBeforeExpiry := waitAny(ctx, watch, expiry)
		if timer != nil {
			timer.Stop()
		}
		if !changedBeforeExpiry {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Info("an mTLS exception expired; its ports are STRICT again")
			snap = s.cfg.Store.Snapshot()
			s.sync(ctx, snap, all)
			continue
		}
		// Coalesce: wait until the model has been quiet for Debounce, or
		// MaxDelay has passed since the first change.
		deadline := time.NewTimer(s.cfg.MaxDelay)
		for {
			quiet := time.NewTimer(s.cfg.Debounce)
			more := waitAny(ctx, s.cfg.Store.Snapshot().Watch(), quiet.C, deadline.C)
			quiet.Stop()
			if ctx.Err() != nil {
				deadline.Stop()
				return nil
			}
			if !more {
				break
			}
		}
		deadline.Stop()
		changed := map[string]bool{}
		for t, ch := range watch {
			select {
			case <-ch:
				changed[t] = true
			default:
			}
		}
		snap = s.cfg.Store.Snapshot()
		s.sync(ctx, snap, changed)
	}
}

// sync publishes the snapshot to every connected proxy that the changed
// tables affect.
func (s *Server) sync(ctx context.Context, snap *model.Snapshot, changed map[string]bool) {
	start := time.Now()
	full := changed[model.TableMesh] || changed[model.TableServices] || changed[model.TableWorkloads] ||
		changed[model.TableMTLS] || changed[model.TableAccess]
	endpoints := changed[model.TableEndpoints]
	now := s.cfg.Now()
	opts := xds.Options{Now: now, Authz: authz.NewIndex(snap, now)}
	td := snap.Mesh().TrustDomain
	live := map[string]bool{}
	for _, p := range snap.Proxies() {
		live[p.ID] = true
		prev := s.published[p.ID]
		reconnected := prev == nil || prev.proxy != p
		w := snap.Workload(p.Namespace, p.Workload)
		var res *xds.Resources
		var ids map[string][]string
		if w != nil {
			ids = xds.UpstreamIdentities(snap, w, opts)
		}
		// New identities behind a service change its clusters too, so the
		// endpoint fast path is not enough.
		retranslate := reconnected || full || (endpoints && !reflect.DeepEqual(ids, prev.identities))
		if w != nil && w.Identity(td).String() != p.Identity {
			// The workload's identity changed under a connected proxy: the
			// proxy no longer proves it is that workload.
			w = nil
		}
		switch {
		case retranslate || (w == nil && prev != nil && prev.resources != nil && !empty(prev.resources)):
			if w == nil {
				s.log.Warn("proxy's workload is gone from the mesh or has another identity now; it gets no configuration",
					"node", p.ID, "workload", p.WorkloadKey(), "identity", p.Identity)
				res = &xds.Resources{}
				break
			}
			r, err := xds.Translate(snap, w, opts)
			if err != nil {
				s.m.translateErrs.Inc()
				s.log.Error("translation failed; the proxy keeps its last configuration", "node", p.ID, "err", err)
				continue
			}
			res = r
		case endpoints && w != nil:
			r := *prev.resources
			r.Endpoints = xds.TranslateEndpoints(snap, w, opts)
			res = &r
		default:
			continue
		}
		s.publish(ctx, p, prev, res, ids)
	}
	for id := range s.published {
		if !live[id] {
			delete(s.published, id)
		}
	}
	s.m.syncs.Inc()
	s.m.syncDuration.Observe(time.Since(start).Seconds())
}

// publish checks res and hands it to the cache if it differs from what
// the proxy has.
func (s *Server) publish(ctx context.Context, p *model.Proxy, prev *published, res *xds.Resources, ids map[string][]string) {
	if err := xds.Check(res, s.cfg.Secrets); err != nil {
		s.m.inconsistent.Inc()
		s.log.Error("configuration withheld: it failed the consistency check; the proxy keeps its last configuration",
			"node", p.ID, "err", err)
		return
	}
	byType := map[types.ResponseType][]types.Resource{
		types.Listener: asResources(res.Listeners),
		types.Route:    asResources(res.Routes),
		types.Cluster:  asResources(res.Clusters),
		types.Endpoint: asResources(res.Endpoints),
	}
	next := &published{proxy: p, resources: res, identities: ids}
	snapshot := &cachev3.Snapshot{}
	for t, items := range byType {
		v, err := version(items)
		if err != nil {
			s.log.Error("cannot version configuration", "node", p.ID, "err", err)
			return
		}
		next.versions[t] = v
		snapshot.Resources[t] = cachev3.NewResources(v, items)
	}
	if prev != nil && prev.proxy == p && prev.versions == next.versions {
		s.published[p.ID] = next
		return
	}
	if err := s.cache.SetSnapshot(ctx, p.ID, snapshot); err != nil {
		s.log.Error("cannot set snapshot", "node", p.ID, "err", err)
		return
	}
	s.published[p.ID] = next
	s.m.snapshotsSet.Inc()
	s.log.Debug("published", "node", p.ID, "listeners", len(res.Listeners), "clusters", len(res.Clusters))
}

func empty(r *xds.Resources) bool {
	return len(r.Listeners)+len(r.Clusters)+len(r.Routes)+len(r.Endpoints) == 0
}

// synced reports whether the sources have synced.
func (s *Server) synced() bool {
	if s.cfg.Synced == nil {
		return true
	}
	select {
	case <-s.cfg.Synced:
		return true
	default:
		return false
	}
}

func asResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

// version is a hash of the resources' deterministic encoding: equal
// content, equal version, so an unchanged type is never sent again, and a
// control plane restarted on the same model agrees with what its proxies
// already have.
func version(items []types.Resource) (string, error) {
	h := sha256.New()
	var n [8]byte
	opts := proto.MarshalOptions{Deterministic: true}
	for _, r := range items {
		b, err := opts.Marshal(r)
		if err != nil {
			return "", err
		}
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}

// waitAny blocks until one of chans is closed (true), or a timer in
// stop fires or ctx ends (false).
func waitAny(ctx context.Context, chans map[string]<-chan struct{}, stop ...<-chan time.Time) bool {
	cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}}
	for _, c := range stop {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(c)})
	}
	first := len(cases)
	for _, ch := range chans {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
	}
	i, _, _ := reflect.Select(cases)
	return i >= first
}

func typeName(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "lds"
	case resourcev3.RouteType:
		return "rds"
	case resourcev3.ClusterType:
		return "cds"
	case resourcev3.EndpointType:
		return "eds"
	case resourcev3.SecretType:
		return "sds"
	}
	return fmt.Sprintf("other(%s)", typeURL)
}
