package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// restConfig reads a kubeconfig, or the in-cluster config when path is
// empty.
func restConfig(path string) (*rest.Config, error) {
	if path == "" {
		return rest.InClusterConfig()
	}
	return clientcmd.BuildConfigFromFlags("", path)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// limitFlags binds the limits of the gRPC port and of issuance.
func limitFlags(fs *flag.FlagSet, l *controlplane.Limits) {
	fs.DurationVar(&l.HandshakeTimeout, "handshake-timeout", controlplane.DefaultHandshakeTimeout,
		"close a gRPC connection whose TLS handshake and HTTP/2 preface are not done within this")
	fs.DurationVar(&l.IdleTimeout, "idle-timeout", controlplane.DefaultIdleTimeout,
		"close a gRPC connection that has had no stream for this long")
	fs.IntVar(&l.MaxConnections, "max-connections", controlplane.DefaultMaxConnections,
		"most connections open on the gRPC port at once; more are closed on accept (-1: no limit)")
	fs.IntVar(&l.MaxConnectionsPerSource, "max-connections-per-source", controlplane.DefaultMaxConnectionsPerSource,
		"most connections open at once from one IP address (-1: no limit)")
	fs.Float64Var(&l.Issuance.PerIdentity, "issue-rate-per-identity", issuer.DefaultRatePerIdentity,
		"certificates per second one SPIFFE ID may obtain once its burst is used (-1: no limit)")
	fs.IntVar(&l.Issuance.PerIdentityBurst, "issue-burst-per-identity", issuer.DefaultBurstPerIdentity,
		"certificates one SPIFFE ID may obtain at once")
	fs.Float64Var(&l.Issuance.Global, "issue-rate", issuer.DefaultRate,
		"certificates per second for all workloads together once the burst is used (-1: no limit)")
	fs.IntVar(&l.Issuance.GlobalBurst, "issue-burst", issuer.DefaultBurst,
		"certificates all workloads together may obtain at once")
}

func runServe(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("serve", "--mesh FILE|DIR [--mesh ...] [flags]", stderr)
	var cfg controlplane.Config
	var mesh listFlag
	fs.Var(&mesh, "mesh", "mesh file, or directory of them (repeatable)")
	fs.StringVar(&cfg.CADir, "ca-dir", "", "CA material (from 'bulwark ca init', or your own root-cert.pem, ca-cert.pem, ca-key.pem) (required)")
	fs.StringVar(&cfg.TokenDir, "token-dir", "", "join tokens (default: <ca-dir>/tokens)")
	fs.StringVar(&cfg.AdminSocket, "admin-socket", "", "Unix socket of the trust admin service that 'bulwark ca' talks to, for this user and root only "+
		"(default <ca-dir>/admin.sock; Kubernetes: "+controlplane.DefaultKubeAdminSocket+"); none disables it")
	fs.StringVar(&cfg.Identity, "identity", "", "the control plane's SPIFFE ID (default spiffe://<trust domain>/ns/bulwark-system/sa/bulwark)")
	fs.DurationVar(&cfg.ReissueWithin, "reissue-within", trust.DefaultReissueWithin,
		"after an activation, workloads replace leaves the old authority signed each at a random moment within this")
	fs.DurationVar(&cfg.EvidenceWarmup, "evidence-warmup", controlplane.DefaultEvidenceWarmup,
		"after a start, gates wait at most this long for the proxies connected before to reconnect (all of it when it is not known which were; negative: not at all)")
	fs.DurationVar(&cfg.MaxCertTTL, "max-cert-ttl", 0, "cap on workload certificate lifetimes (default and upper limit 24h)")
	fs.StringVar(&cfg.XDSAddress, "xds-address", "127.0.0.1:15010", "address for ADS and the CA service (gRPC, mutual TLS)")
	fs.StringVar(&cfg.HTTPAddress, "http-address", "127.0.0.1:15014", "address for /metrics, /debug/proxies and /healthz (unauthenticated: keep it on loopback); empty disables")
	fs.StringVar(&cfg.MetricsAddress, "metrics-address", "", "address for /metrics and /healthz only, without /debug, for probes and scrapers from outside the host; empty disables")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	limitFlags(fs, &cfg.Limits)
	kubeconfig := fs.String("kubeconfig", "", "serve a Kubernetes cluster's mesh, reached with this kubeconfig")
	inCluster := fs.Bool("in-cluster", false, "serve the mesh of the cluster this pod runs in")
	var kc controlplane.KubeConfig
	fs.StringVar(&kc.Namespace, "namespace", envOr("POD_NAMESPACE", contract.ControlPlaneNamespace), "Kubernetes: the control plane's namespace (CA Secret, Lease, mesh-wide policies)")
	fs.StringVar(&kc.TrustDomain, "trust-domain", model.DefaultTrustDomain, "Kubernetes: the mesh's trust domain")
	defaultAccess := fs.String("default-access", string(model.DefaultDeny), "Kubernetes: what workloads no ALLOW policy selects accept: deny or allow-mesh")
	fs.StringVar(&kc.Holder, "pod-name", os.Getenv("POD_NAME"), "Kubernetes: this replica's name in the CA Lease")
	if err := parse(fs, args); err != nil {
		return err
	}
	kubeMode := *kubeconfig != "" || *inCluster
	if (len(mesh) == 0) == !kubeMode || (!kubeMode && cfg.CADir == "") {
		fmt.Fprintln(stderr, "bulwark serve: give --mesh (with --ca-dir) or --kubeconfig/--in-cluster")
		fs.Usage()
		return errUsage
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	cfg.MeshPaths, cfg.Logger = mesh, log
	if kubeMode {
		if kc.Rest, err = restConfig(*kubeconfig); err != nil {
			return err
		}
		switch model.DefaultAccess(*defaultAccess) {
		case model.DefaultDeny, model.DefaultAllowMesh:
			kc.DefaultAccess = model.DefaultAccess(*defaultAccess)
		default:
			return fmt.Errorf("--default-access %q: use deny or allow-mesh", *defaultAccess)
		}
		cfg.Kube = &kc
	}
	cp, err := controlplane.Start(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return errInterrupted // a signal while starting, e.g. loading a big mesh file
		}
		return err
	}
	return cp.Wait()
}
