package kube

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/netnstest"
	"github.com/bulwarkmesh/bulwark/internal/testtier"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

// TestPodsFromTheAPIServer, end to end once: the real API server feeds
// Bulwark; pods are network namespaces whose addresses are the
// EndpointSlice addresses; each runs capture, its app and `bulwark agent`
// with a real TokenRequest token and the real Envoy. frontend reaches api
// by its ClusterIP over mTLS; other is denied by policy.
func TestPodsFromTheAPIServer(t *testing.T) {
	needAPIServer(t, testtier.Root, testtier.Envoy)
	envoyBin := envoytest.Bin(t)
	n, err := netnstest.New("10.78.0.1")
	if n != nil {
		t.Cleanup(func() {
			if t.Failed() {
				n.DumpLogs(os.Stderr)
			}
			n.Teardown()
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	c := api.client(t)
	applyCRDs(t)
	namespace(t, c, "bulwark-system", false)
	const ns = "pods"
	namespace(t, c, ns, true)
	svc := service(t, c, ns, "api", 8080)
	accessPolicy(t, ns, "api-from-frontend", allowFrom("frontend"))
	cp := controlPlaneOn(t, api.admin(), "bulwark-system", "cp-pods", "10.78.0.1:0")

	type spec struct{ name, sa, ip string }
	specs := []spec{{"frontend-1", "frontend", "10.78.0.10"}, {"api-1", "api", "10.78.0.11"}, {"other-1", "other", "10.78.0.12"}}
	pods := map[string]*netnstest.Pod{}
	for _, s := range specs {
		kp := pod(t, c, ns, s.name, s.sa, s.ip, map[string]string{"app": s.sa})
		if s.name == "api-1" {
			slice(t, c, ns, "api", 8080, endpoint{kp, true})
		}
		p, err := n.AddPod(s.name, s.ip)
		if err != nil {
			t.Fatal(err)
		}
		pods[s.name] = p
		tokenFile := filepath.Join(n.Dir, s.name+".token")
		if err := os.WriteFile(tokenFile, []byte(tokenFor(t, c, kp, "bulwark")), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := n.Exec(p, nil, "iptables"); err != nil {
			t.Fatal(err)
		}
		if err := n.Start(p, nil, nil, "demo-app", "--name", s.name, "--http", "0.0.0.0:8080"); err != nil {
			t.Fatal(err)
		}
		if err := n.Start(p, &syscall.Credential{Uid: 0, Gid: 1337}, nil, "agent",
			"--workload", ns+"/"+s.name, "--control-plane", cp.XDSAddr.String(),
			"--bundle", filepath.Join(cp.CADir, ca.RootCertFile), "--serviceaccount-token-file", tokenFile,
			"--sds-socket", filepath.Join(n.Dir, s.name+".sock"), "--bootstrap", filepath.Join(n.Dir, s.name+".yaml"),
			"--run-envoy", "--envoy", envoyBin); err != nil {
			t.Fatal(err)
		}
	}
	if err := netnstest.WaitLive(60*time.Second, pods["frontend-1"], pods["api-1"], pods["other-1"]); err != nil {
		t.Fatal(err)
	}

	url := "http://" + svc.Spec.ClusterIP + ":8080/hello"
	get := func(p *netnstest.Pod) (int, *demoapp.Reply) {
		resp, err := netnstest.Client(p, nil).Get(url)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var r demoapp.Reply
		_ = json.Unmarshal(body, &r)
		return resp.StatusCode, &r
	}
	var r *demoapp.Reply
	testwait.Until(t, "frontend to reach api", 30*time.Second, func() bool {
		var code int
		code, r = get(pods["frontend-1"])
		return code == http.StatusOK
	})
	if r.Workload != "api-1" || r.Caller != "spiffe://cluster.local/ns/pods/sa/frontend" {
		t.Errorf("answered by %q for %q", r.Workload, r.Caller)
	}
	// other's identity may not call api at all: its sidecar is not even
	// given the service (config scoping), and api's sidecar would refuse.
	if code, _ := get(pods["other-1"]); code == http.StatusOK {
		t.Error("other reached api")
	}
}
