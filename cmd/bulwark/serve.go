package main

import (
	"context"
	"fmt"
	"io"

	"github.com/bulwarkmesh/bulwark/controlplane"
)

func runServe(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("serve", "--mesh FILE|DIR [--mesh ...] [flags]", stderr)
	var cfg controlplane.Config
	var mesh listFlag
	fs.Var(&mesh, "mesh", "mesh file, or directory of them (repeatable)")
	fs.StringVar(&cfg.CADir, "ca-dir", "", "CA material (from 'bulwark ca init', or your own root-cert.pem, ca-cert.pem, ca-key.pem) (required)")
	fs.StringVar(&cfg.TokenDir, "token-dir", "", "join tokens (default: <ca-dir>/tokens)")
	fs.StringVar(&cfg.Identity, "identity", "", "the control plane's SPIFFE ID (default spiffe://<trust domain>/ns/bulwark-system/sa/bulwark)")
	fs.DurationVar(&cfg.MaxCertTTL, "max-cert-ttl", 0, "cap on workload certificate lifetimes (default and upper limit 24h)")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15010", "address for ADS and the CA service (gRPC, mutual TLS)")
	fs.StringVar(&cfg.HTTPAddress, "http-address", "127.0.0.1:15014", "address for /metrics, /debug/proxies and /healthz; empty disables")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(mesh) == 0 || cfg.CADir == "" {
		fmt.Fprintln(stderr, "bulwark serve: --mesh and --ca-dir are required")
		fs.Usage()
		return errUsage
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	cfg.MeshPaths, cfg.Logger = mesh, log
	cp, err := controlplane.Start(ctx, cfg)
	if err != nil {
		return err
	}
	return cp.Wait()
}
