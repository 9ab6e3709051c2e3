package main

import (
	"context"
	"io"

	"github.com/bulwarkmesh/bulwark/localmesh"
)

// defaultMesh is the mesh `bulwark up` runs when given none.
const defaultMesh = "examples/local/mesh.yaml"

func runUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("up", "[--mesh FILE|DIR ...] [flags]", stderr)
	var cfg localmesh.Config
	var mesh listFlag
	fs.Var(&mesh, "mesh", "mesh file, or directory of them (repeatable; default "+defaultMesh+")")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15010", "address for ADS (gRPC)")
	fs.StringVar(&cfg.HTTPAddress, "http-address", "127.0.0.1:15014", "address for /metrics and /debug/proxies")
	fs.StringVar(&cfg.EnvoyBin, "envoy", "", "Envoy binary (default: $ENVOY_BIN, .venv/bin/envoy, then PATH)")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "directory for bootstraps and Envoy logs (default: a temporary one, removed on exit)")
	fs.StringVar(&cfg.EnvoyLogLevel, "envoy-log-level", "warning", "Envoy's --log-level")
	fs.StringVar(&cfg.CADir, "ca-dir", "", "the demo mesh's CA (default: <work-dir>/ca, created if missing)")
	fs.DurationVar(&cfg.CertTTL, "cert-ttl", 0, "lifetime of workload certificates (default 24h; try 2m to watch rotation)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(mesh) == 0 {
		mesh = listFlag{defaultMesh}
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	cfg.MeshPaths, cfg.Logger = mesh, log
	m, err := localmesh.Start(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return errInterrupted // a signal while starting, e.g. loading a big mesh file
		}
		return err
	}
	m.Banner(stdout)
	<-ctx.Done()
	log.Info("stopping the local mesh")
	return m.Stop()
}
