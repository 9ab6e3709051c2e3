package server

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
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
	// SyncWait is how long a proxy that connects before the sources have
	// synced is held before it is told to retry (Unavailable). Holding it
	// means a control plane restart costs a proxy the sync time, not the
	// sync time plus its reconnect backoff. Defaults to 15s.
	SyncWait time.Duration
	// Debounce is how long the model must stay quiet before a change is
	// published; changes within it are coalesced. Defaults to 100ms.
	Debounce time.Duration
	// MaxDelay bounds how long a steady stream of changes can hold back
	// a publish. Defaults to 1s.
	MaxDelay time.Duration
	// EndpointDebounce is the quiet period when only endpoints changed
	// (and proxies came or went). Publishing that is cheap, only the load
	// assignments that changed, and the sources coalesce their own
	// events already, so an endpoint that went away stops getting
	// traffic sooner. Defaults to 20ms.
	EndpointDebounce time.Duration
	// ProxyDebounce is the quiet period when only proxies connected or
	// left: a new proxy waits no longer than that for its configuration.
	// Defaults to 10ms.
	ProxyDebounce time.Duration
	// Secrets are the SDS secret names every proxy's local SDS server
	// provides; a listener or cluster naming another is withheld.
	// Defaults to contract.Secrets().
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
	cache *fanout.Cache
	xds   serverv3.Server

	// mu guards streams and proxies. It is held around a call into the
	// cache only to clear a node (see OnStreamClosed); the cache never
	// calls into the server, so that cannot deadlock.
	mu      sync.Mutex
	streams map[int64]*stream      // open ADS streams
	proxies map[string]*proxyState // by node ID, while any stream is open
	// wake holds a signal, when there is one, that proxies connected or
	// left, or the revocation epoch changed, since Run last looked; see
	// proxiesChanged.
	wake chan struct{}
	// epoch is the revocation epoch to publish (SetRevocationEpoch).
	epoch atomic.Uint64

	// published maps each proxy the cache has a configuration for to the
	// connection it was made for. Touched only by the Run goroutine, as
	// are tr, built and prep: the last translation pass, reused while
	// only proxies come and go (a translator does not read them), and
	// the snapshot it translates, and the revocation epoch it stamps.
	published  map[string]*proxy
	tr         *xds.Translator
	built      *model.Snapshot
	builtEpoch uint64
	prep       *fanout.Preparer

	hooks hooks // for tests only
}

// New returns a server for cfg. It does nothing until Run.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Identify == nil {
		return nil, errors.New("server: Store and Identify are required")
	}
	if cfg.Secrets == nil {
		cfg.Secrets = contract.Secrets()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.EndpointDebounce <= 0 {
		cfg.EndpointDebounce = 20 * time.Millisecond
	}
	if cfg.ProxyDebounce <= 0 {
		cfg.ProxyDebounce = 10 * time.Millisecond
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SyncWait <= 0 {
		cfg.SyncWait = 15 * time.Second
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "xds"),
		m:         newMetrics(cfg.Registerer),
		streams:   map[int64]*stream{},
		proxies:   map[string]*proxyState{},
		wake:      make(chan struct{}, 1),
		published: map[string]*proxy{},
		cache:     fanout.NewCache(),
	}
	return s, nil
}

// ServerOptions are the options the gRPC server that the Server is
// registered on should have: a codec that writes the configuration every
// proxy shares without copying it per stream, and connection buffers
// sized for thousands of mostly idle streams that now and then take a
// megabyte of configuration: the write buffer is large (fewer writes to
// the socket) but taken from a pool only while there is something to
// write, and the read buffer is small, as requests are.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(fanout.Codec()),
		grpc.SharedWriteBuffer(true),
		grpc.WriteBufferSize(256 << 10),
		grpc.ReadBufferSize(4 << 10),
	}
}

// Register adds the aggregated discovery service to g. The server's
// context bounds the streams it serves.
func (s *Server) Register(ctx context.Context, g grpc.ServiceRegistrar) {
	s.xds = serverv3.NewServer(ctx, s.cache, &callbacks{s}, sotwOrdered(), sotwLogger(cacheLogger{s.log}))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// SetRevocationEpoch sets the mesh's revocation epoch. When it differs
// from the current one, every connected proxy's configuration is
// translated again with the epoch stamped on everything that carries
// mutual TLS (xds.Options.RevocationEpoch), and pushed: Envoy then
// drains every mutual TLS connection it holds, which a new validation
// context alone never does (see the xds package's revocation.go). The
// same epoch again pushes nothing.
//
// The epoch must change whenever the set of revoked certificates does
// and only then (each change costs every sidecar one reconnection of
// each of its mutual TLS connections), and must survive a control plane
// restart: call SetRevocationEpoch with the stored epoch before Run, so
// the first configuration a reconnecting proxy gets is the one it holds
// and drains nothing. 0, the initial epoch, stamps nothing. Safe for
// concurrent use; it never blocks.
func (s *Server) SetRevocationEpoch(epoch uint64) {
	if s.epoch.Swap(epoch) != epoch {
		s.proxiesChanged()
	}
}

// Run publishes the model until ctx ends: once the sources have synced,
// then after every coalesced change to the model, to the set of
// connected proxies or to the revocation epoch.
func (s *Server) Run(ctx context.Context) error {
	if s.cfg.Synced != nil {
		s.log.Info("waiting for sources to sync before publishing")
		select {
		case <-s.cfg.Synced:
		case <-ctx.Done():
			return nil
		}
	}
	snap := s.publish(true)
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
		changedBeforeExpiry := waitAny(ctx, watch, s.wake, expiry)
		if timer != nil {
			timer.Stop()
		}
		if !changedBeforeExpiry {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Info("an mTLS exception expired; its ports are STRICT again")
			snap = s.publish(true)
			continue
		}
		// Coalesce: wait until the model and the proxies have been quiet
		// for Debounce, or MaxDelay has passed since the first change.
		// Proxies connecting are not a change to coalesce with others:
		// they wait for ProxyDebounce only, and endpoint changes for
		// EndpointDebounce, unless more of the model changes too. The
		// watch only chooses how long to wait: what the pass translates
		// again, publish works out from the snapshots.
		deadline := time.NewTimer(s.cfg.MaxDelay)
		for {
			wait := s.cfg.Debounce
			switch {
			case only(watch):
				wait = s.cfg.ProxyDebounce
			case only(watch, model.TableEndpoints):
				wait = s.cfg.EndpointDebounce
			}
			quiet := time.NewTimer(wait)
			more := waitAny(ctx, s.cfg.Store.Snapshot().Watch(), s.wake, quiet.C, deadline.C)
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
		snap = s.publish(false)
	}
}

// publish takes the connected proxies, then a snapshot of the model, and
// syncs the one to the other; it returns the snapshot. In that order, a
// proxy is only ever translated with a model at least as new as the one
// it was admitted with.
//
// The tables that changed are those that differ between the snapshot
// and the one the last translator was built from (every table if all).
// Reading them off the watch channels that woke the run loop instead
// would miss a write that lands, or whose channels go-memdb has not yet
// closed, when the snapshot is taken: the snapshot would hold it, the
// translator would keep parts built without it, and the next watch,
// taken from that snapshot, would never fire for it.
func (s *Server) publish(all bool) *model.Snapshot {
	proxies := s.connected()
	if s.hooks.beforeSnapshot != nil {
		s.hooks.beforeSnapshot()
	}
	snap := s.cfg.Store.Snapshot()
	since := s.built
	if all {
		since = nil
	}
	s.sync(snap, proxies, snap.ChangedSince(since))
	if s.hooks.published != nil {
		s.hooks.published(snap)
	}
	return snap
}

// only reports whether, of the tables watched, none but tables changed.
func only(watch map[string]<-chan struct{}, tables ...string) bool {
	for t, ch := range watch {
		select {
		case <-ch:
			if !slices.Contains(tables, t) {
				return false
			}
		default:
		}
	}
	return true
}

// sync publishes the snapshot to proxies, the connected proxies. changed
// holds the tables in which snap differs from the snapshot the last
// translator was built from. When no table of the model changed and the
// revocation epoch did not either, only the proxies that (re)connected
// are translated; otherwise all are. A translation pass builds what
// proxies share once, and the cache only answers the proxies, and the
// types, that changed.
func (s *Server) sync(snap *model.Snapshot, proxies []*proxy, changed map[string]bool) {
	start := time.Now()
	epoch := s.epoch.Load()
	modelChanged := len(changed) > 0
	if s.tr != nil && epoch != s.builtEpoch {
		s.log.Info("revocation epoch changed: every proxy drains its mutual TLS connections",
			"from", s.builtEpoch, "to", epoch)
		modelChanged = true
	}
	switch {
	case s.tr == nil:
		now := s.cfg.Now()
		s.tr, s.built = xds.NewTranslator(snap, xds.Options{Now: now, Authz: authz.NewIndex(snap, now), Secrets: s.cfg.Secrets, RevocationEpoch: epoch}), snap
		s.prep = fanout.NewPreparer()
	case modelChanged:
		// Next starts afresh unless only endpoints changed; then it
		// rebuilds only the services whose endpoints did. A new epoch
		// changes every proxy: it starts afresh then too.
		s.tr, s.built = s.tr.Next(snap, xds.Options{Now: s.cfg.Now(), Secrets: s.cfg.Secrets, RevocationEpoch: epoch}, changed), snap
		s.prep = s.prep.Next()
	}
	s.builtEpoch = epoch
	tr, prep := s.tr, s.prep
	td := snap.Mesh().TrustDomain
	live := map[string]bool{}
	updated := 0
	for _, p := range proxies {
		live[p.id] = true
		if !modelChanged && s.published[p.id] == p {
			continue
		}
		w := snap.Workload(p.namespace, p.workload)
		var parts []*xds.Part
		// A proxy whose workload is gone, or whose identity changed under
		// it (it no longer proves it is that workload), gets an empty
		// configuration.
		gone := w == nil || w.Identity(td).String() != p.identity
		if !gone {
			var err error
			parts, err = tr.Parts(w)
			if err != nil {
				if errors.Is(err, xds.ErrInconsistent) {
					s.m.inconsistent.Inc()
					s.log.Error("configuration withheld: it failed the consistency check; the proxy keeps its last configuration",
						"node", p.id, "err", err)
				} else {
					s.m.translateErrs.Inc()
					s.log.Error("translation failed; the proxy keeps its last configuration", "node", p.id, "err", err)
				}
				continue
			}
		}
		cfg, err := prep.Prepare(parts)
		if err != nil {
			s.m.translateErrs.Inc()
			s.log.Error("cannot encode configuration; the proxy keeps its last configuration", "node", p.id, "err", err)
			continue
		}
		s.published[p.id] = p
		if ch := s.cache.SetNode(p.id, cfg); ch != [len(fanout.Kinds)]bool{} {
			updated++
			if gone {
				s.log.Warn("proxy's workload is gone from the mesh or has another identity now; it gets no configuration",
					"node", p.id, "workload", p.workloadKey(), "identity", p.identity)
			}
			s.log.Debug("published", "node", p.id, "versions", cfg.Versions())
		}
	}
	for id := range s.published {
		if !live[id] {
			delete(s.published, id)
		}
	}
	s.m.snapshotsSet.Add(float64(updated))
	s.m.syncs.Inc()
	s.m.syncDuration.Observe(time.Since(start).Seconds())
}

// waitSynced waits, at most SyncWait, for the sources to sync or ctx to
// end, and reports whether they synced.
func (s *Server) waitSynced(ctx context.Context) bool {
	if s.synced() {
		return true
	}
	t := time.NewTimer(s.cfg.SyncWait)
	defer t.Stop()
	select {
	case <-s.cfg.Synced:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
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

// waitAny blocks until one of chans is closed or wake has a signal
// (true), or a timer in stop fires or ctx ends (false). It takes the
// signal from wake.
func waitAny(ctx context.Context, chans map[string]<-chan struct{}, wake <-chan struct{}, stop ...<-chan time.Time) bool {
	cases := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())}}
	for _, c := range stop {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(c)})
	}
	first := len(cases)
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(wake)})
	for _, ch := range chans {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
	}
	i, _, _ := reflect.Select(cases)
	return i >= first
}

// typeNames are the resource types a sidecar is sent, by type URL.
var typeNames = map[string]string{
	resourcev3.ListenerType: "lds",
	resourcev3.RouteType:    "rds",
	resourcev3.ClusterType:  "cds",
	resourcev3.EndpointType: "eds",
	resourcev3.SecretType:   "sds",
}

// typeName is the short name of a type URL; "other" for any type URL not
// in typeNames, so what a client sends cannot mint metric labels.
func typeName(typeURL string) string {
	if n, ok := typeNames[typeURL]; ok {
		return n
	}
	return "other"
}
