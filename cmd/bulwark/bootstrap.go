package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/localmesh"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/bootstrap"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
)

func runBootstrap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bootstrap", "--workload NAMESPACE/NAME [flags]", stderr)
	workload := fs.String("workload", "", "the workload the sidecar serves, namespace/name (required)")
	node := fs.String("node", "", "Envoy node ID (default: the workload, namespace/name)")
	var mesh listFlag
	fs.Var(&mesh, "mesh", "mesh file or directory: check the workload exists and take its admin address from it")
	xdsAddr := fs.String("xds-address", "127.0.0.1:15010", "the control plane's ADS address")
	admin := fs.String("admin-address", "", "Envoy admin address (default: <localAddress>:15000 with --mesh, else "+bootstrap.DefaultAdminAddress+")")
	out := fs.String("out", "", "write to this file instead of standard output")
	sdsSocket := fs.String("sds-socket", "/var/run/bulwark/sds.sock", "the agent's SDS socket")
	cpID := fs.String("control-plane-id", "", "the control plane's SPIFFE ID (default spiffe://<trust domain>/ns/bulwark-system/sa/bulwark)")
	trustDomain := fs.String("trust-domain", "", "trust domain for the default control plane ID (default: the mesh file's, else cluster.local)")
	if err := parse(fs, args); err != nil {
		return err
	}
	ns, name, ok := model.ParseNodeID(*workload)
	if !ok {
		fmt.Fprintf(stderr, "bulwark bootstrap: --workload %q: want namespace/name\n", *workload)
		fs.Usage()
		return errUsage
	}
	if len(mesh) > 0 {
		st, err := meshfile.Load(ctx, mesh)
		if err != nil {
			return err
		}
		var w *model.Workload
		for _, x := range st.Workloads {
			if x.Namespace == ns && x.Name == name {
				w = x
			}
		}
		if w == nil {
			return fmt.Errorf("workload %s/%s is not in %v", ns, name, []string(mesh))
		}
		if *admin == "" {
			*admin = net.JoinHostPort(w.LocalAddress, strconv.Itoa(localmesh.AdminPort))
		}
		if *trustDomain == "" {
			*trustDomain = st.Mesh.TrustDomain
		}
	}
	if *trustDomain == "" {
		*trustDomain = model.DefaultTrustDomain
	}
	if *cpID == "" {
		td, err := spiffeid.TrustDomainFromString(*trustDomain)
		if err != nil {
			return fmt.Errorf("--trust-domain: %w", err)
		}
		*cpID = contract.ControlPlaneID(td).String()
	}
	if *node == "" {
		*node = model.NodeID(ns, name)
	}
	b, err := bootstrap.Build(bootstrap.Config{NodeID: *node, XDSAddress: *xdsAddr, AdminAddress: *admin,
		SDSSocket: *sdsSocket, ControlPlaneID: *cpID})
	if err != nil {
		return err
	}
	y, err := bootstrap.YAML(b)
	if err != nil {
		return err
	}
	if *out != "" {
		return os.WriteFile(*out, y, 0o644)
	}
	_, err = stdout.Write(y)
	return err
}
