package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/model"
)

// TestLongestPathsReachEnvoy: Envoy refuses a regular expression whose
// RE2 program is too big, and with it the listener that holds it; the
// size estimate behind validation (model.PathPattern.Regex) is what keeps
// a policy from doing that. For each shape of path (long segments, many
// segments, any case, a prefix, "*", "**", a mix), the longest path
// validation accepts, as a DENY for frontend and as an ALLOW for other,
// goes into one mesh: api's sidecar must take its listener without a
// NACK, and a request for each path must be denied or allowed by it.
func TestLongestPathsReachEnvoy(t *testing.T) {
	bin := envoytest.Bin(t)
	type shape struct {
		name       string
		grow       func(n int) string
		ignoreCase bool
	}
	shapes := []shape{
		{"one long segment", func(n int) string { return "/" + strings.Repeat("x", n) }, false},
		{"many segments", func(n int) string { return strings.Repeat("/ab", n) }, false},
		{"many segments in any case", func(n int) string { return strings.Repeat("/Ab", n) }, true},
		{"prefix", func(n int) string { return strings.Repeat("/ab", n) + "/*" }, false},
		{"stars", func(n int) string { return "/a" + strings.Repeat("/*", n) }, false},
		{"double stars", func(n int) string { return strings.Repeat("/**/a", n) }, false},
		{"mixed", func(n int) string { return strings.Repeat("/a.b/*/**", n) }, true},
	}
	type probe struct {
		caller, path string
		deny         bool
	}
	var docs strings.Builder
	var probes []probe
	docs.WriteString(`apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: budget}
spec:
  services:
    - {name: api, namespace: demo, ports: [{name: http, port: 8080, protocol: http}]}
  workloads:
    - {name: api-1, namespace: demo, serviceAccount: api, address: 127.0.85.1, localAddress: 127.0.86.1, services: [api]}
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: frontend, namespace: demo}
spec:
  selector: {service: api}
  action: ALLOW
  rules: [{from: [{serviceAccounts: [frontend]}]}]
`)
	for _, action := range []model.Action{model.ActionDeny, model.ActionAllow} {
		caller := map[model.Action]string{model.ActionDeny: "frontend", model.ActionAllow: "other"}[action]
		for i, s := range shapes {
			longest := ""
			for n := 1; n < 100; n++ {
				p := s.grow(n)
				pol := &model.AccessPolicy{Namespace: "demo", Name: "probe", Spec: model.AccessPolicySpec{
					Selector: model.AccessSelector{Service: "api"}, Action: action,
					Rules: []model.AccessRule{{From: []model.Source{{ServiceAccounts: []string{caller}}}, To: []model.Operation{{Paths: []string{p}, IgnoreCase: s.ignoreCase}}}},
				}}
				if err := pol.Validate("spec", "cluster.local"); err != nil {
					if !strings.Contains(err.Error(), "too long for the sidecar") {
						t.Fatalf("%s: %v", p, err)
					}
					break
				}
				longest = p
			}
			if longest == "" {
				t.Fatalf("%s %s: no path of this shape is accepted", action, s.name)
			}
			fmt.Fprintf(&docs, `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: %s-%d, namespace: demo}
spec:
  selector: {service: api}
  action: %s
  rules: [{from: [{serviceAccounts: [%s]}], to: [{paths: [%q], ignoreCase: %v}]}]
`, strings.ToLower(string(action)), i, action, caller, longest, s.ignoreCase)
			req := strings.NewReplacer("**", "y", "*", "x").Replace(longest)
			if s.ignoreCase {
				req = strings.ToUpper(req)
			}
			probes = append(probes, probe{caller: caller, path: req, deny: action == model.ActionDeny})
		}
	}

	m := startMesh(t, bin, docs.String())
	testwait.Until(t, "api's sidecar to have ACKed or NACKed its configuration", 20*time.Second, func() bool {
		ps := m.ControlPlane().Server.Proxies()
		if len(ps) != 1 {
			return false
		}
		for _, ts := range ps[0].Types {
			if ts.NackError != "" {
				return true
			}
		}
		return ps[0].Synced
	})
	for _, p := range m.ControlPlane().Server.Proxies() {
		for typ, ts := range p.Types {
			if ts.NackError != "" {
				t.Fatalf("%s NACKed %s: %s", p.Node, typ, ts.NackError)
			}
		}
	}
	certs := map[string]string{"frontend": "spiffe://cluster.local/ns/demo/sa/frontend", "other": "spiffe://cluster.local/ns/demo/sa/other"}
	for _, p := range probes {
		want := "allowed"
		if p.deny {
			want = "denied"
		}
		got, detail, err := send("127.0.85.1:8080", svid(t, m, certs[p.caller]), p.path)
		if err != nil || got != want {
			t.Errorf("%s GET %s: %s %s %v, want %s", p.caller, p.path, got, detail, err, want)
		}
	}
}
