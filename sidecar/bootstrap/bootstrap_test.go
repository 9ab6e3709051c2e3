package bootstrap_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/golden"
	"github.com/bulwarkmesh/bulwark/sidecar/bootstrap"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

var cpID = contract.ControlPlaneID(spiffeid.RequireTrustDomainFromString("cluster.local")).String()

func TestBootstrapGoldenAndEnvoyAcceptsIt(t *testing.T) {
	out := golden.NewDir(t, "testdata")
	for _, tc := range []struct {
		name string
		cfg  bootstrap.Config
	}{
		{"ip", bootstrap.Config{NodeID: "demo/frontend-1", XDSAddress: "127.0.0.1:15010", AdminAddress: "127.0.2.1:15000",
			SDSSocket: "/run/bulwark/frontend-1/sds.sock", ControlPlaneID: cpID}},
		{"dns", bootstrap.Config{NodeID: "prod/api-7f9c", XDSAddress: "bulwark.bulwark-system.svc:15010",
			SDSSocket: "/var/run/bulwark/sds.sock", ControlPlaneID: cpID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := bootstrap.Build(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			y, err := bootstrap.YAML(b)
			if err != nil {
				t.Fatal(err)
			}
			out.Compare(tc.name+".yaml", y)
			envoytest.Validate(t, y)
		})
	}
	out.Finish()
}

func TestBootstrapErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  bootstrap.Config
		want string
	}{
		{"no node", bootstrap.Config{XDSAddress: "127.0.0.1:1", SDSSocket: "/s", ControlPlaneID: cpID}, "node ID is required"},
		{"no port", bootstrap.Config{NodeID: "a/b", XDSAddress: "127.0.0.1", SDSSocket: "/s", ControlPlaneID: cpID}, "xDS address"},
		{"port zero", bootstrap.Config{NodeID: "a/b", XDSAddress: "127.0.0.1:0", SDSSocket: "/s", ControlPlaneID: cpID}, `"0" is not a port`},
		{"admin by name", bootstrap.Config{NodeID: "a/b", XDSAddress: "127.0.0.1:1", AdminAddress: "localhost:15000", SDSSocket: "/s", ControlPlaneID: cpID}, "must be an IP address"},
		{"no SDS", bootstrap.Config{NodeID: "a/b", XDSAddress: "127.0.0.1:1", ControlPlaneID: cpID}, "SDS socket is required"},
		{"no control plane ID", bootstrap.Config{NodeID: "a/b", XDSAddress: "127.0.0.1:1", SDSSocket: "/s"}, "not a SPIFFE ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := bootstrap.Build(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
