package netns

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/netnstest"
	"github.com/bulwarkmesh/bulwark/internal/testfs"
	"github.com/bulwarkmesh/bulwark/internal/testtier"
)

// The cluster every test in this package shares: a bridge, a namespace
// per pod, the control plane on the bridge's address.
var cl *cluster

const (
	subnet    = "10.77.0"
	gatewayIP = subnet + ".1"
	proxyGID  = 1337
	certTTL   = 40 * time.Second // short, so rotation is seen within the test
)

// The mesh: frontend and other call api by its service address. api
// serves HTTP on 8080 and a TCP line echo on 9000.
const meshHead = `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: pods}
spec:
  services:
    - {name: frontend, namespace: demo, address: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080, protocol: http}]}
    - name: api
      namespace: demo
      address: 10.96.0.11
      ports:
        - {name: http, port: 8080, protocol: http}
        - {name: echo, port: 9000, protocol: tcp}
  workloads:
    - {name: frontend-1, namespace: demo, serviceAccount: frontend, address: 10.77.0.10, capture: transparent, services: [frontend]}
    - {name: api-1, namespace: demo, serviceAccount: api, labels: {app: api}, address: 10.77.0.11, capture: transparent, services: [api]}
    - {name: other-1, namespace: demo, serviceAccount: other, address: 10.77.0.12, capture: transparent}
`

// The policies every test starts from: frontend and namespace foo may
// call api; other only /public/* on HTTP; frontend and other the echo
// port, but a DENY shuts other out of it; nobody reaches /admin.
const basePolicies = `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-allow, namespace: demo}
spec:
  selector: {service: api}
  action: ALLOW
  rules:
    - from: [{serviceAccounts: [frontend]}, {namespaces: [foo]}]
      to: [{ports: [8080]}]
    - from: [{serviceAccounts: [other]}]
      to: [{ports: [8080], paths: ["/public/*"]}]
    - from: [{serviceAccounts: [frontend, other]}]
      to: [{ports: [9000]}]
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-admin, namespace: demo}
spec:
  selector: {service: api}
  action: DENY
  rules:
    - from: [{namespaces: ["*"]}, {unauthenticated: true}]
      to: [{ports: [8080], paths: ["/admin", "/admin/*"]}]
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: echo-no-other, namespace: demo}
spec:
  selector: {service: api}
  action: DENY
  rules:
    - from: [{serviceAccounts: [other]}]
      to: [{ports: [9000]}]
`

// mesh is the mesh file of the base mesh plus extra documents.
func mesh(extra ...string) string { return meshHead + basePolicies + strings.Join(extra, "") }

type cluster struct {
	net  *netnstest.Net
	cp   *controlplane.ControlPlane
	mesh string
	pods map[string]*netnstest.Pod
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// The unit tier: no cluster; every test skips (needCluster).
		os.Exit(m.Run())
	}
	code := func() int {
		c, err := setupCluster()
		if c != nil && c.net != nil {
			defer c.teardown()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "netns tests cannot run: %v\n", err)
			if c != nil && c.net != nil {
				c.net.DumpLogs(os.Stderr)
			}
			return 1
		}
		cl = c
		code := m.Run()
		if code != 0 {
			c.net.DumpLogs(os.Stderr)
		}
		return code
	}()
	os.Exit(code)
}

// needCluster skips the test in the unit tier (-short), where TestMain
// builds no cluster. Every test calls it first.
func needCluster(t *testing.T) {
	t.Helper()
	testtier.Needs(t, testtier.Root, testtier.Envoy)
}

func (c *cluster) teardown() {
	if c.cp != nil {
		_ = c.cp.Stop()
	}
	c.net.Teardown()
}

func setupCluster() (*cluster, error) {
	envoyBin, err := envoy.Find()
	if err != nil {
		return nil, err
	}
	n, err := netnstest.New(gatewayIP)
	c := &cluster{net: n, pods: map[string]*netnstest.Pod{}}
	if err != nil {
		return c, err
	}
	for _, p := range []struct{ name, ip string }{
		{"frontend-1", subnet + ".10"}, {"api-1", subnet + ".11"}, {"other-1", subnet + ".12"}, {"attacker", subnet + ".66"},
	} {
		pod, err := n.AddPod(p.name, p.ip)
		if err != nil {
			return c, err
		}
		c.pods[p.name] = pod
	}

	// The control plane: a CA, the mesh file, ADS on the bridge.
	caDir := filepath.Join(n.Dir, "ca")
	if err := ca.Init(ca.InitConfig{Dir: caDir, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}); err != nil {
		return c, err
	}
	c.mesh = filepath.Join(n.Dir, "mesh", "mesh.yaml")
	if err := os.MkdirAll(filepath.Dir(c.mesh), 0o755); err != nil {
		return c, err
	}
	if err := c.writeMesh(mesh()); err != nil {
		return c, err
	}
	logf, err := os.Create(filepath.Join(n.Dir, "controlplane.log"))
	if err != nil {
		return c, err
	}
	n.AddLog(logf.Name())
	cp, err := controlplane.Start(context.Background(), controlplane.Config{
		MeshPaths: []string{filepath.Dir(c.mesh)}, CADir: caDir, XDSAddress: gatewayIP + ":0",
		Logger: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})), Debounce: 20 * time.Millisecond,
	})
	if err != nil {
		return c, err
	}
	c.cp = cp

	// Each pod: capture (the init container), the app, the agent that
	// runs Envoy with the proxy's group.
	var sidecars []*netnstest.Pod
	for _, name := range []string{"frontend-1", "api-1", "other-1"} {
		p := c.pods[name]
		if err := n.Exec(p, nil, "iptables"); err != nil {
			return c, err
		}
		if err := n.Start(p, nil, nil, "demo-app", "--name", p.Name, "--http", "0.0.0.0:8080", "--tcp", "0.0.0.0:9000"); err != nil {
			return c, err
		}
		token, err := cp.Tokens.Create("demo/"+p.Name, 10*time.Minute)
		if err != nil {
			return c, err
		}
		if err := n.Start(p, &syscall.Credential{Uid: 0, Gid: proxyGID}, []string{"BULWARK_JOIN_TOKEN=" + token}, "agent",
			"--workload", "demo/"+p.Name, "--control-plane", cp.XDSAddr.String(), "--bundle", filepath.Join(caDir, ca.RootCertFile),
			"--join-token-env", "BULWARK_JOIN_TOKEN", "--cert-ttl", certTTL.String(),
			"--sds-socket", filepath.Join(n.Dir, p.Name+".sock"), "--bootstrap", filepath.Join(n.Dir, p.Name+".bootstrap.yaml"),
			"--run-envoy", "--envoy", envoyBin, "--envoy-log-level", "info",
		); err != nil {
			return c, err
		}
		sidecars = append(sidecars, p)
	}
	return c, netnstest.WaitLive(60*time.Second, sidecars...)
}

func (c *cluster) writeMesh(body string) error { return testfs.ReplaceFile(c.mesh, body) }

// Every sidecar took its configuration: a proxy that rejected some of
// it (a NACK) keeps running on what it had before, which no other test
// would necessarily notice. other-1 backs no service, so its inbound
// side has no port at all.
func TestEveryEnvoyAcceptsItsConfiguration(t *testing.T) {
	needCluster(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var problems []string
		ps := cl.cp.Server.Proxies()
		for _, p := range ps {
			for typ, st := range p.Types {
				if st.NackError != "" {
					problems = append(problems, fmt.Sprintf("%s rejected %s version %s: %s", p.Node, typ, st.NackedVersion, st.NackError))
				}
			}
			if !p.Synced {
				problems = append(problems, p.Node+" has not ACKed all it was sent")
			}
		}
		if len(ps) < 3 {
			problems = append(problems, fmt.Sprintf("%d of 3 sidecars connected", len(ps)))
		}
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecars not in sync:\n%s", strings.Join(problems, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
