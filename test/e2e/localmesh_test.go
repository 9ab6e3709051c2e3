package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/testfs"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/localmesh"
	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

// Addresses in 127.0.81.0/24 and 127.0.82.0/24, so the test does not
// collide with a `make run` on the same machine.
const meshHead = `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: e2e}
spec:
  services:
`

const apiService = `    - {name: api, namespace: demo, ports: [{name: http, port: 8080, protocol: http}]}
`

const frontendService = `    - {name: frontend, namespace: demo, ports: [{name: http, port: 8080, protocol: http}]}
`

func frontend(withUpstream bool) string {
	s := `  workloads:
    - name: frontend-1
      namespace: demo
      serviceAccount: frontend
      address: 127.0.81.1
      localAddress: 127.0.82.1
      services: [frontend]
`
	if withUpstream {
		s += "      upstreams: [{service: api, localPort: 18080}]\n"
	}
	return s
}

func apiWorkload(n int) string {
	return fmt.Sprintf(`    - name: api-%d
      namespace: demo
      serviceAccount: api
      address: 127.0.81.%d
      localAddress: 127.0.82.%d
      services: [api]
`, n, 10+n, 10+n)
}

// allowFrontend lets frontend call api; without it the mesh default
// (deny) refuses the call.
const allowFrontend = `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-from-frontend, namespace: demo}
spec:
  selector: {service: api}
  action: ALLOW
  rules: [{from: [{serviceAccounts: [frontend]}]}]
`

// call asks frontend's app to call api through the mesh.
func call(t *testing.T) demoapp.CallReply {
	t.Helper()
	r, err := tryCall()
	if err != nil {
		t.Fatalf("frontend app: %v", err)
	}
	return r
}

// tryCall is call for polling loops: frontend's app is restarted when
// its upstreams change, and refuses connections for that moment.
func tryCall() (demoapp.CallReply, error) {
	var r demoapp.CallReply
	resp, err := http.Get("http://127.0.82.1:8080/call/api/hello")
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&r)
	return r, err
}

func served(t *testing.T, r demoapp.CallReply) demoapp.Reply {
	t.Helper()
	var rep demoapp.Reply
	if r.Status != http.StatusOK {
		t.Fatalf("call failed: %+v", r)
	}
	if err := json.Unmarshal(r.Body, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// stat reads one counter from an Envoy's admin interface.
func stat(t *testing.T, admin, name string) int {
	t.Helper()
	body, err := envoy.AdminGet(context.Background(), admin, "/stats?filter=^"+regexp.QuoteMeta(name)+"$")
	if err != nil {
		t.Fatalf("stats from %s: %v", admin, err)
	}
	for _, line := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && k == name {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

func pids(m *localmesh.Mesh) map[string]int {
	out := map[string]int{}
	for _, sc := range m.Sidecars() {
		out[sc.Workload.Key()] = sc.EnvoyPID
	}
	return out
}

func TestLocalMeshTrafficFollowsMeshFileEdits(t *testing.T) {
	bin := envoytest.Bin(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	testfs.Replace(t, path, meshHead+apiService+frontendService+frontend(true)+apiWorkload(1)+allowFrontend)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := localmesh.Start(ctx, localmesh.Config{
		MeshPaths: []string{path}, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0",
		EnvoyBin: bin, WorkDir: filepath.Join(dir, "work"), Logger: testlog.New(t), Debounce: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if t.Failed() {
			for _, f := range []string{"demo.frontend-1.envoy.log", "demo.api-1.envoy.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, "work", f))
				t.Logf("--- %s ---\n%s", f, b)
			}
		}
	})

	// frontend's app -> frontend's Envoy (outbound) -> api's Envoy
	// (inbound) -> api's app.
	rep := served(t, call(t))
	if rep.Workload != "api-1" || rep.Path != "/hello" {
		t.Errorf("answered by %q for %q, want api-1 for /hello", rep.Workload, rep.Path)
	}
	if rep.Headers["x-envoy-expected-rq-timeout-ms"] == "" || rep.RequestID == "" {
		t.Errorf("the request did not pass through Envoy: headers %v", rep.Headers)
	}
	// Sidecar to sidecar is mutual TLS: api's sidecar verified frontend's
	// certificate and told the app who called.
	if rep.Caller != "spiffe://cluster.local/ns/demo/sa/frontend" {
		t.Errorf("caller = %q, want frontend's SPIFFE ID (x-forwarded-client-cert: %q)", rep.Caller, rep.Headers["x-forwarded-client-cert"])
	}
	if n := stat(t, "127.0.82.1:15000", "cluster.outbound|8080|api.demo.upstream_rq_200"); n < 1 {
		t.Errorf("frontend's sidecar counted %d requests to api, want at least 1", n)
	}
	if n := stat(t, "127.0.82.11:15000", "http.inbound_8080.downstream_rq_2xx"); n < 1 {
		t.Errorf("api's sidecar counted %d inbound requests, want at least 1", n)
	}
	before := pids(m)

	// A new endpoint: api-2 joins; frontend's sidecar learns it over EDS.
	testfs.Replace(t, path, meshHead+apiService+frontendService+frontend(true)+apiWorkload(1)+apiWorkload(2)+allowFrontend)
	testwait.Until(t, "a call answered by api-2", 20*time.Second, func() bool {
		r, err := tryCall()
		return err == nil && r.Status == http.StatusOK && served(t, r).Workload == "api-2"
	})

	// An invalid edit is refused and traffic keeps flowing.
	testfs.Replace(t, path, meshHead+apiService+frontendService+frontend(true)+apiWorkload(1)+strings.Replace(apiWorkload(2), "127.0.81.12", "not-an-ip", 1)+allowFrontend)
	metrics := "http://" + m.ControlPlane().HTTPAddr.String() + "/metrics"
	testwait.Until(t, "the invalid edit to be refused", 10*time.Second, func() bool {
		resp, err := http.Get(metrics)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), "\nbulwark_meshfile_last_reload_successful 0\n")
	})
	if r := call(t); r.Status != http.StatusOK {
		t.Fatalf("after an invalid edit the call failed: %+v", r)
	}

	// A removed service: frontend no longer calls api, and its sidecar
	// drops the listener; the app's call now fails at its own sidecar.
	testfs.Replace(t, path, meshHead+frontendService+frontend(false))
	testwait.Until(t, "frontend's sidecar to stop listening for api", 20*time.Second, func() bool {
		_, err := http.Get("http://127.0.82.1:18080/hello")
		return err != nil && strings.Contains(err.Error(), "connection refused")
	})
	listeners, err := envoy.AdminGet(ctx, "127.0.82.1:15000", "/listeners")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(listeners, "outbound|8080|api.demo") {
		t.Errorf("frontend's sidecar still has the api listener:\n%s", listeners)
	}

	// The service comes back exactly as it was: frontend's sidecar had
	// dropped its load assignment and asks for it again, and must be sent
	// it again although it did not change (else the cluster would wait
	// for it, warming, and then have no endpoints).
	testfs.Replace(t, path, meshHead+apiService+frontendService+frontend(true)+apiWorkload(1)+apiWorkload(2)+allowFrontend)
	testwait.Until(t, "a call to api again after it came back unchanged", 10*time.Second, func() bool {
		r, err := tryCall()
		return err == nil && r.Status == http.StatusOK
	})

	// None of this restarted frontend's sidecar.
	if after := pids(m); after["demo/frontend-1"] != before["demo/frontend-1"] {
		t.Errorf("frontend's Envoy was restarted (pid %d -> %d); edits must arrive over xDS", before["demo/frontend-1"], after["demo/frontend-1"])
	}
	// And nothing was NACKed along the way.
	for _, p := range m.ControlPlane().Server.Proxies() {
		for typ, ts := range p.Types {
			if ts.NackError != "" {
				t.Errorf("%s NACKed %s: %s", p.Node, typ, ts.NackError)
			}
		}
	}
}
