// Package controlplane assembles `bulwark serve`: the model store, the
// mesh file source, the ADS server on gRPC, and the HTTP endpoint for
// metrics and status. It is wiring only; each part lives in its own
// package.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/bulwarkmesh/bulwark/meshfile"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// Config configures a control plane.
type Config struct {
	// MeshPaths are the mesh files or directories to serve. Required.
	MeshPaths []string
	// XDSAddress is where ADS listens, host:port; port 0 picks one.
	XDSAddress string
	// HTTPAddress is where /metrics, /debug/proxies and /healthz listen;
	// empty disables it.
	HTTPAddress string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Debounce is how long the model must be quiet before a publish;
	// defaults to the server's default.
	Debounce time.Duration
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// XDSAddr and HTTPAddr are the bound addresses.
	XDSAddr  net.Addr
	HTTPAddr net.Addr
	Store    *model.Store
	Server   *server.Server

	cancel context.CancelFunc
	ctx    context.Context
	group  *errgroup.Group
	once   sync.Once
	err    error
}

// Start loads the mesh, binds the listeners and serves in the background
// until ctx ends or Stop is called. A mesh that does not load is an error
// here: there is no last good configuration yet.
func Start(ctx context.Context, cfg Config) (*ControlPlane, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.XDSAddress == "" {
		return nil, errors.New("controlplane: XDSAddress is required")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	store := model.NewStore()
	src, err := meshfile.New(meshfile.Config{Paths: cfg.MeshPaths, Store: store, Logger: cfg.Logger, Registerer: reg})
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{Store: store, Logger: cfg.Logger, Registerer: reg, Debounce: cfg.Debounce})
	if err != nil {
		return nil, err
	}

	xdsLis, err := net.Listen("tcp", cfg.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("xDS listener: %w", err)
	}
	var httpLis net.Listener
	if cfg.HTTPAddress != "" {
		httpLis, err = net.Listen("tcp", cfg.HTTPAddress)
		if err != nil {
			xdsLis.Close()
			return nil, fmt.Errorf("HTTP listener: %w", err)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	g, ctx := errgroup.WithContext(ctx)
	cp := &ControlPlane{XDSAddr: xdsLis.Addr(), Store: store, Server: srv, cancel: cancel, ctx: ctx, group: g}

	grpcServer := grpc.NewServer(
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(1<<16),
	)
	srv.Register(ctx, grpcServer)

	g.Go(func() error { return src.Run(ctx) })
	g.Go(func() error { return srv.Run(ctx) })
	g.Go(func() error {
		if err := grpcServer.Serve(xdsLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xDS server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { grpcServer.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			grpcServer.Stop() // ADS streams never end on their own
		}
		return nil
	})
	if httpLis != nil {
		cp.HTTPAddr = httpLis.Addr()
		hs := &http.Server{Handler: debugMux(reg, srv), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := hs.Serve(httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("HTTP server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			return hs.Close()
		})
	}
	cfg.Logger.Info("control plane serving", "xds", cp.XDSAddr.String(), "http", addrString(cp.HTTPAddr))
	return cp, nil
}

// Stop shuts the control plane down and waits for it. It returns the
// first error any part failed with.
func (c *ControlPlane) Stop() error {
	c.cancel()
	return c.Wait()
}

// Done is closed when the control plane begins to stop.
func (c *ControlPlane) Done() <-chan struct{} { return c.ctx.Done() }

// Wait blocks until the control plane has stopped (its context ended or
// a part failed) and returns the first error.
func (c *ControlPlane) Wait() error {
	c.once.Do(func() { c.err = c.group.Wait() })
	return c.err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func debugMux(reg *prometheus.Registry, srv *server.Server) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /debug/proxies", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(srv.Proxies())
	})
	return mux
}
