package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/agent"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
)

func runAgent(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("agent", "--workload NAMESPACE/NAME --control-plane HOST:PORT --bundle FILE --join-token-file FILE [flags]", stderr)
	var cfg agent.Config
	fs.StringVar(&cfg.Workload, "workload", "", "the workload this agent runs beside, namespace/name (required)")
	fs.StringVar(&cfg.ControlPlane, "control-plane", "", "the control plane's address, host:port (required)")
	cpID := fs.String("control-plane-id", "", "the control plane's SPIFFE ID (default spiffe://<trust domain>/ns/bulwark-system/sa/bulwark)")
	tdName := fs.String("trust-domain", model.DefaultTrustDomain, "trust domain")
	bundlePath := fs.String("bundle", "", "PEM trust anchors to verify the control plane with (root-cert.pem) (required)")
	tokenFile := fs.String("join-token-file", "", "file holding a join token from 'bulwark token create'")
	tokenEnv := fs.String("join-token-env", "BULWARK_JOIN_TOKEN", "environment variable holding the join token, if no file")
	fs.StringVar(&cfg.ServiceAccountTokenFile, "serviceaccount-token-file", "", "in Kubernetes: the pod's projected ServiceAccount token (audience bulwark), instead of a join token")
	fs.DurationVar(&cfg.CertTTL, "cert-ttl", 0, "certificate lifetime to ask for (default: the CA's, 24h)")
	fs.StringVar(&cfg.SDSSocket, "sds-socket", "/var/run/bulwark/sds.sock", "Unix socket to serve SDS to Envoy on")
	fs.StringVar(&cfg.BootstrapPath, "bootstrap", "", "write the Envoy bootstrap here")
	fs.StringVar(&cfg.AdminAddress, "admin-address", "127.0.0.1:15000", "Envoy's admin address")
	runEnvoy := fs.Bool("run-envoy", false, "run Envoy as a child process (needs --bootstrap)")
	envoyBin := fs.String("envoy", "", "Envoy binary (default: $ENVOY_BIN, .venv/bin/envoy, then PATH)")
	envoyLog := fs.String("envoy-log-level", "warning", "Envoy's --log-level")
	envoyGID := fs.Int("envoy-gid", -1, "run Envoy with this group ID (the one iptables capture exempts)")
	envoyUID := fs.Int("envoy-uid", -1, "run Envoy with this user ID")
	sdsUIDs := fs.String("sds-allowed-uids", "", "comma-separated user IDs, besides the agent's own and --envoy-uid, whose processes may fetch the key over the SDS socket (an Envoy the agent does not run)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parse(fs, args); err != nil {
		return err
	}
	if cfg.Workload == "" {
		// In a pod: namespace/name from the downward API.
		if ns, pod := os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME"); ns != "" && pod != "" {
			cfg.Workload = ns + "/" + pod
		}
	}
	if cfg.Workload == "" || cfg.ControlPlane == "" || *bundlePath == "" {
		fs.Usage()
		return errUsage
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return err
	}
	cfg.ControlPlaneID = contract.ControlPlaneID(td)
	if *cpID != "" {
		if cfg.ControlPlaneID, err = spiffeid.FromString(*cpID); err != nil {
			return fmt.Errorf("--control-plane-id: %w", err)
		}
	}
	bundle, err := x509bundle.Load(td, *bundlePath)
	if err != nil {
		return fmt.Errorf("--bundle: %w", err)
	}
	cfg.TrustBundle = bundle.X509Authorities()
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return err
		}
		cfg.JoinToken = strings.TrimSpace(string(b))
	} else {
		cfg.JoinToken = os.Getenv(*tokenEnv)
	}
	for _, f := range strings.FieldsFunc(*sdsUIDs, func(r rune) bool { return r == ',' || r == ' ' }) {
		uid, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return fmt.Errorf("--sds-allowed-uids: %q is not a user ID", f)
		}
		cfg.SDSAllowedUIDs = append(cfg.SDSAllowedUIDs, uint32(uid))
	}
	if *runEnvoy {
		e := &agent.EnvoyConfig{Bin: *envoyBin, LogLevel: *envoyLog, Stdout: os.Stdout, Stderr: os.Stderr}
		if *envoyGID >= 0 {
			g := uint32(*envoyGID)
			e.GID = &g
		}
		if *envoyUID >= 0 {
			u := uint32(*envoyUID)
			e.UID = &u
		}
		cfg.Envoy = e
	}
	cfg.Logger = log
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
