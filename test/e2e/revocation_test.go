package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"syscall"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/localmesh"
	"github.com/bulwarkmesh/bulwark/sidecar/agent"
)

// revocationMesh: frontend calls api (HTTP) and db (TCP, the demo app's
// line echo), both over mutual TLS.
var revocationMesh = meshHead + apiService + frontendService +
	`    - {name: db, namespace: demo, ports: [{name: tcp, port: 5432, protocol: tcp}]}
  workloads:
    - name: frontend-1
      namespace: demo
      serviceAccount: frontend
      address: 127.0.81.1
      localAddress: 127.0.82.1
      services: [frontend]
      upstreams: [{service: api, localPort: 18080}, {service: db, localPort: 15432}]
` + apiWorkload(1) + `    - name: db-1
      namespace: demo
      serviceAccount: db
      address: 127.0.81.21
      localAddress: 127.0.82.21
      services: [db]
` + allowFrontend + `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: db-from-frontend, namespace: demo}
spec:
  selector: {service: db}
  action: ALLOW
  rules: [{from: [{serviceAccounts: [frontend]}]}]
`

// TestRevocationEpochClosesEstablishedConnections: Envoy never checks
// an established connection's peer certificate again, so a revocation
// must close them. After SetRevocationEpoch each side closes its own
// mutual TLS connections without the other's help (the other side's
// Envoy is frozen with SIGSTOP, as a peer that holds a stolen key would
// not cooperate either): a server's sidecar its inbound ones, a client's
// sidecar its pooled HTTP ones and its TCP ones. New calls work at once
// over new connections, and a connection that is not mutual TLS (the
// app's keep-alive connection to its own sidecar) stays open.
func TestRevocationEpochClosesEstablishedConnections(t *testing.T) {
	bin := envoytest.Bin(t)
	m := startMesh(t, bin, revocationMesh)
	srv := m.ControlPlane().Server
	pid := pids(m)
	const (
		frontendAdmin = "127.0.82.1:15000"
		apiAdmin      = "127.0.82.11:15000"
		toAPI         = "cluster.outbound|8080|api.demo."
		apiInbound    = "http.inbound_8080.downstream_cx_active"
	)
	limit := agent.DrainTime + 5*time.Second

	// The test as frontend's app, on a keep-alive connection to its
	// sidecar's outbound listener for api (plaintext, on loopback).
	app := &appConn{t: t, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}}
	app.get()
	served(t, call(t))
	// Each of Envoy's workers has its own pool: one or two connections.
	testwait.Until(t, "pooled connections from frontend's sidecar to api's", 5*time.Second, func() bool {
		n := stat(t, frontendAdmin, toAPI+"upstream_cx_active")
		return n >= 1 && stat(t, apiAdmin, apiInbound) == n
	})

	// Server side: api's sidecar drains its mutual TLS chain.
	freeze(t, pid["demo/frontend-1"])
	updates := stat(t, apiAdmin, "listener_manager.listener_in_place_updated")
	start := time.Now()
	srv.SetRevocationEpoch(1)
	var applied time.Duration
	testwait.Until(t, "api's sidecar to close frontend's connection", limit, func() bool {
		if applied == 0 && stat(t, apiAdmin, "listener_manager.listener_in_place_updated") > updates {
			applied = time.Since(start)
		}
		return stat(t, apiAdmin, apiInbound) == 0
	})
	closed := time.Since(start)
	t.Logf("MEASURED: server side (inbound mTLS chain): update applied %v, idle keep-alive connection closed %v after SetRevocationEpoch (drain time %v)",
		applied.Round(time.Millisecond), closed.Round(time.Millisecond), agent.DrainTime)
	if applied == 0 {
		t.Errorf("api's sidecar closed the connection but counted no in-place filter chain update")
	}
	thaw(t, pid["demo/frontend-1"])
	settled(t, m, "demo/frontend-1", frontendAdmin)
	newCall := time.Now()
	testwait.Until(t, "a call after the revocation", 10*time.Second, func() bool {
		r, err := tryCall()
		return err == nil && r.Status == http.StatusOK
	})
	t.Logf("MEASURED: a new call after the revocation answered in %v (a new connection)", time.Since(newCall).Round(time.Millisecond))

	// Client side: frontend's sidecar replaces its cluster to api and
	// closes the pooled connection.
	testwait.Until(t, "a new pooled connection to api", 5*time.Second, func() bool {
		return stat(t, frontendAdmin, toAPI+"upstream_cx_active") >= 1
	})
	freeze(t, pid["demo/api-1"])
	local := stat(t, frontendAdmin, toAPI+"upstream_cx_destroy_local")
	start = time.Now()
	srv.SetRevocationEpoch(2)
	testwait.Until(t, "frontend's sidecar to close its connection to api", limit, func() bool {
		return stat(t, frontendAdmin, toAPI+"upstream_cx_active") == 0
	})
	t.Logf("MEASURED: client side (outbound cluster): pooled connection closed %v after SetRevocationEpoch", time.Since(start).Round(time.Millisecond))
	if n := stat(t, frontendAdmin, toAPI+"upstream_cx_destroy_local"); n <= local {
		t.Errorf("frontend's sidecar did not close the connection itself (upstream_cx_destroy_local %d -> %d)", local, n)
	}
	thaw(t, pid["demo/api-1"])
	settled(t, m, "demo/api-1", apiAdmin)
	total := stat(t, frontendAdmin, toAPI+"upstream_cx_total")
	served(t, call(t))
	if n := stat(t, frontendAdmin, toAPI+"upstream_cx_total"); n != total+1 {
		t.Errorf("connections to api %d -> %d, want one new one", total, n)
	}

	// TCP, client side: the proxied connection is not pooled; frontend's
	// sidecar closes it although db's Envoy is frozen.
	tcp := dbEcho(t, "127.0.82.1:15432", "before")
	freeze(t, pid["demo/db-1"])
	start = time.Now()
	srv.SetRevocationEpoch(3)
	_ = tcp.SetReadDeadline(time.Now().Add(limit))
	if _, err := tcp.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("the TCP connection through frontend's sidecar is still open %v after SetRevocationEpoch: %v", time.Since(start), err)
	} else {
		t.Logf("MEASURED: client side (outbound TCP): connection closed %v after SetRevocationEpoch (%v)", time.Since(start).Round(time.Millisecond), err)
	}
	thaw(t, pid["demo/db-1"])
	settled(t, m, "demo/db-1", "127.0.82.21:15000")
	dbEcho(t, "127.0.82.1:15432", "after").Close()

	// TCP, server side: db's sidecar closes a connection from a frozen
	// frontend.
	tcp = dbEcho(t, "127.0.82.1:15432", "before")
	testwait.Until(t, "db's sidecar to hold the one connection", 5*time.Second, func() bool {
		return stat(t, "127.0.82.21:15000", "listener.127.0.81.21_5432.downstream_cx_active") == 1
	})
	freeze(t, pid["demo/frontend-1"])
	start = time.Now()
	srv.SetRevocationEpoch(4)
	testwait.Until(t, "db's sidecar to close frontend's connection", limit, func() bool {
		return stat(t, "127.0.82.21:15000", "listener.127.0.81.21_5432.downstream_cx_active") == 0
	})
	t.Logf("MEASURED: server side (inbound TCP): connection closed %v after SetRevocationEpoch", time.Since(start).Round(time.Millisecond))
	thaw(t, pid["demo/frontend-1"])
	settled(t, m, "demo/frontend-1", frontendAdmin)
	tcp.Close()

	// The same epoch again changes nothing: no update reaches the
	// sidecar, and its connection stays.
	served(t, call(t))
	counters := func() [4]int {
		return [4]int{stat(t, frontendAdmin, "cluster_manager.cds.update_success"), stat(t, frontendAdmin, "listener_manager.lds.update_success"),
			stat(t, frontendAdmin, toAPI+"update_success"), stat(t, frontendAdmin, toAPI+"upstream_cx_destroy")}
	}
	before := counters()
	srv.SetRevocationEpoch(4)
	time.Sleep(time.Second) // nothing to wait for: anything sent would arrive well within
	if after := counters(); after != before {
		t.Errorf("the same epoch again: CDS, LDS, EDS updates and closed connections %v -> %v, want no change", before, after)
	}
	if n := stat(t, frontendAdmin, toAPI+"upstream_cx_active"); n < 1 {
		t.Errorf("frontend's sidecar has %d connections to api after the same epoch again, want its pooled one", n)
	}

	// The app's own keep-alive connection to its sidecar was never closed.
	if !app.get() {
		t.Errorf("the app's keep-alive connection to its sidecar's outbound listener was closed; only mutual TLS connections should be")
	}
	for _, p := range srv.Proxies() {
		for typ, ts := range p.Types {
			if ts.NackError != "" {
				t.Errorf("%s NACKed %s: %s", p.Node, typ, ts.NackError)
			}
		}
	}
}

// settled waits until a proxy that was frozen has acknowledged what it
// was sent meanwhile and finished warming it.
func settled(t *testing.T, m *localmesh.Mesh, node, admin string) {
	t.Helper()
	testwait.Until(t, node+" to take its configuration", 10*time.Second, func() bool {
		for _, p := range m.ControlPlane().Server.Proxies() {
			if p.Node == node {
				return p.Synced && stat(t, admin, "cluster_manager.warming_clusters") == 0 &&
					stat(t, admin, "listener_manager.total_listeners_warming") == 0
			}
		}
		return false
	})
}

// appConn calls api through frontend's sidecar as frontend's app would,
// on one keep-alive connection.
type appConn struct {
	t      *testing.T
	client *http.Client
}

// get calls api and reports whether it reused the connection.
func (a *appConn) get() (reused bool) {
	a.t.Helper()
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.82.1:18080/hello", nil)
	if err != nil {
		a.t.Fatal(err)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatalf("call through frontend's sidecar: %v", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		a.t.Fatalf("call through frontend's sidecar: %s", resp.Status)
	}
	return reused
}

// dbEcho opens a TCP connection to addr, has db's app echo a line over
// it and returns it, open.
func dbEcho(t *testing.T, addr, line string) net.Conn {
	t.Helper()
	var c net.Conn
	testwait.Until(t, "db to echo "+line, 10*time.Second, func() bool {
		var err error
		if c, err = net.DialTimeout("tcp", addr, time.Second); err != nil {
			return false
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			c.Close()
			return false
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != "db-1: "+line+"\n" {
			c.Close()
			return false
		}
		_ = c.SetDeadline(time.Time{})
		return true
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// freeze stops a process (SIGSTOP) until thaw or the end of the test.
func freeze(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %d: %v", pid, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
}

func thaw(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT %d: %v", pid, err)
	}
}
