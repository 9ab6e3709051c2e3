package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/testfs"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/localmesh"
	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

// The edge mesh: frontend calls api through both sidecars; api serves
// HTTP on 8080 and a line echo on 9000. frontend may call api, nobody
// reaches /admin. Addresses in 127.0.87.0/24 and 127.0.88.0/24, apart
// from the other tests of this package and from `make run`.
const edgeMesh = `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: edge}
spec:
  services:
    - name: api
      namespace: demo
      ports:
        - {name: http, port: 8080, protocol: http}
        - {name: echo, port: 9000, protocol: tcp}
  workloads:
    - name: frontend-1
      namespace: demo
      serviceAccount: frontend
      address: 127.0.87.1
      localAddress: 127.0.88.1
      upstreams: [{service: api, port: 8080, localPort: 18080}]
    - name: api-1
      namespace: demo
      serviceAccount: api
      address: 127.0.87.11
      localAddress: 127.0.88.11
      services: [api]
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-from-frontend, namespace: demo}
spec:
  selector: {service: api}
  action: ALLOW
  rules: [{from: [{serviceAccounts: [frontend]}]}]
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
`

const (
	edgeFrontendOutbound = "127.0.88.1:18080" // frontend's app calls api here
	edgeAPIHTTP          = "127.0.87.11:8080" // api's sidecar, inbound
	edgeAPIEcho          = "127.0.87.11:9000"
	edgeFrontendID       = "spiffe://cluster.local/ns/demo/sa/frontend"
	edgeOtherID          = "spiffe://cluster.local/ns/demo/sa/other"
)

func startEdgeMesh(t *testing.T) *localmesh.Mesh {
	t.Helper()
	bin := envoytest.Bin(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	testfs.Replace(t, path, edgeMesh)
	ctx, cancel := context.WithCancel(context.Background())
	m, err := localmesh.Start(ctx, localmesh.Config{
		MeshPaths: []string{path}, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0",
		EnvoyBin: bin, WorkDir: filepath.Join(dir, "work"), Logger: testlog.New(t), Debounce: 20 * time.Millisecond,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
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
	return m
}

// rawRequest sends one GET, path and headers byte for byte as given, to
// addr: over TLS with cert when cert is set, in plaintext otherwise. It
// returns the status and body.
func rawRequest(t *testing.T, addr string, cert *tls.Certificate, path string, header map[string]string) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var rw io.ReadWriter = conn
	if cert != nil {
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}}) // the caller does not check who answers
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS to %s: %v", addr, err)
		}
		rw = tc
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: api.demo\r\nConnection: close\r\n"
	for k, v := range header {
		req += k + ": " + v + "\r\n"
	}
	if _, err := io.WriteString(rw, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(rw), nil)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", path, addr, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// accessLines returns the access log lines (JSON) in an Envoy's log.
func accessLines(t *testing.T, m *localmesh.Mesh, workload string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(m.WorkDir(), "demo."+workload+".envoy.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(string(b), "\n") {
		var l map[string]any
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &l) == nil && l["start"] != nil {
			out = append(out, l)
		}
	}
	return out
}

// awaitLine waits for a line of workload's access log with the given
// path and status, and returns it.
func awaitLine(t *testing.T, m *localmesh.Mesh, workload, path string, status int) map[string]any {
	t.Helper()
	var found map[string]any
	testwait.Until(t, fmt.Sprintf("%s's access log to record %s with %d", workload, path, status), 10*time.Second, func() bool {
		for _, l := range accessLines(t, m, workload) {
			if l["path"] == path && fmt.Sprint(l["status"]) == fmt.Sprint(status) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// TestForgedEnvoyHeadersStopAtTheEdge: a caller that sends the headers
// Envoy treats as its own (x-envoy-original-path above all, which the
// access log used to print as the path) gets none of them through either
// edge of the mesh: not from the app into its sidecar's outbound
// listener, not from a peer into the inbound one. Both sidecars log the
// path that was enforced, a denied /admin as /admin, and a request ID
// and downstream address the caller did not choose.
func TestForgedEnvoyHeadersStopAtTheEdge(t *testing.T) {
	m := startEdgeMesh(t)
	forged := func(path string) map[string]string {
		return map[string]string{
			"X-Envoy-Original-Path":       path,
			"X-Request-Id":                "forged-request-id",
			"X-Forwarded-For":             "203.0.113.9",
			"X-Envoy-Internal":            "true",
			"X-Envoy-Decorator-Operation": "forged",
			"X-Envoy-Attempt-Count":       "7",
			"X-Envoy-External-Address":    "203.0.113.9",
			"X-Forwarded-Client-Cert":     "URI=" + edgeOtherID,
		}
	}
	// What the app behind api's sidecar was told.
	checkApp := func(who, body string) {
		t.Helper()
		var rep demoapp.Reply
		if err := json.Unmarshal([]byte(body), &rep); err != nil {
			t.Fatalf("%s: %v: %s", who, err, body)
		}
		for _, h := range []string{"x-envoy-original-path", "x-envoy-internal", "x-envoy-decorator-operation", "x-envoy-attempt-count"} {
			if v, ok := rep.Headers[h]; ok {
				t.Errorf("%s: the app got the caller's %s: %q", who, h, v)
			}
		}
		if v := rep.Headers["x-envoy-external-address"]; strings.Contains(v, "203.0.113.9") {
			t.Errorf("%s: the app got the caller's x-envoy-external-address: %q", who, v)
		}
		if rep.RequestID == "" || rep.RequestID == "forged-request-id" {
			t.Errorf("%s: the app got request ID %q, want one Envoy generated", who, rep.RequestID)
		}
		if xff := rep.Headers["x-forwarded-for"]; strings.HasSuffix(xff, "203.0.113.9") {
			t.Errorf("%s: x-forwarded-for %q ends with the caller's claim", who, xff)
		}
		if rep.Caller != edgeFrontendID {
			t.Errorf("%s: the app was told the caller is %q, want %s", who, rep.Caller, edgeFrontendID)
		}
	}

	// As frontend's app: into frontend's outbound listener, then through
	// api's inbound one.
	if status, body := rawRequest(t, edgeFrontendOutbound, nil, "/admin", forged("/healthz")); status != http.StatusForbidden {
		t.Errorf("frontend's app -> /admin: %d %s, want 403", status, body)
	}
	status, body := rawRequest(t, edgeFrontendOutbound, nil, "/hello", forged("/admin"))
	if status != http.StatusOK {
		t.Fatalf("frontend's app -> /hello: %d %s", status, body)
	}
	checkApp("through frontend's sidecar", body)

	// As a peer holding frontend's key, without a sidecar: straight into
	// api's inbound listener.
	peer := svid(t, m, edgeFrontendID)
	if status, body := rawRequest(t, edgeAPIHTTP, peer, "/admin/users", forged("/healthz")); status != http.StatusForbidden {
		t.Errorf("peer -> /admin/users: %d %s, want 403", status, body)
	}
	status, body = rawRequest(t, edgeAPIHTTP, peer, "/hello-peer", forged("/admin"))
	if status != http.StatusOK {
		t.Fatalf("peer -> /hello-peer: %d %s", status, body)
	}
	checkApp("from a peer", body)

	// The logs: each request under the path that was enforced.
	awaitLine(t, m, "frontend-1", "/admin", 403)
	awaitLine(t, m, "frontend-1", "/hello", 200)
	for _, p := range []string{"/admin", "/admin/users"} {
		if d := awaitLine(t, m, "api-1", p, 403)["details"]; d != "rbac_access_denied_matched_policy[demo/no-admin/0]" {
			t.Errorf("api's log for %s: details %v, want the no-admin rule", p, d)
		}
	}
	awaitLine(t, m, "api-1", "/hello", 200)
	awaitLine(t, m, "api-1", "/hello-peer", 200)
	for _, w := range []string{"frontend-1", "api-1"} {
		for _, l := range accessLines(t, m, w) {
			if l["path"] == "/healthz" {
				t.Errorf("%s logged the forged path: %v", w, l)
			}
			if l["request_id"] == "forged-request-id" {
				t.Errorf("%s logged the caller's request ID: %v", w, l)
			}
			if d, _ := l["downstream"].(string); strings.HasPrefix(d, "203.0.113.9") {
				t.Errorf("%s logged the address the caller claimed: %v", w, l)
			}
		}
	}
}

// svid returns a certificate for id from the mesh's own CA.
func svid(t *testing.T, m *localmesh.Mesh, id string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := m.ControlPlane().CA.SignSVID(key.Public(), spiffeid.RequireFromString(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := pemutil.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(pemutil.EncodeCerts(chain), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}
