package meshfile

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const header = `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata:
  name: m
spec:
`

// validSpec is the body every case starts from (lines 6-21 of the file).
const validSpec = `  services:
    - name: api
      namespace: demo
      ports:
        - {name: http, port: 8080, protocol: http}
        - {name: admin, port: 9090, targetPort: 9091, protocol: tcp}
  workloads:
    - name: api-1
      namespace: demo
      serviceAccount: api
      address: 10.0.0.1
      services: [api]
    - name: web-1
      namespace: demo
      address: 10.0.0.2
      upstreams: [{service: api, port: 8080, localPort: 18080}]
`

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadValid(t *testing.T) {
	st, err := Load(context.Background(), []string{writeFile(t, header+validSpec)})
	if err != nil {
		t.Fatal(err)
	}
	if st.Mesh.TrustDomain != "cluster.local" || st.Mesh.Name != "m" {
		t.Errorf("mesh = %+v, want name m with the default trust domain", st.Mesh)
	}
	if len(st.Services) != 1 || len(st.Workloads) != 2 {
		t.Fatalf("got %d services and %d workloads", len(st.Services), len(st.Workloads))
	}
	web := st.Workloads[1]
	if web.ServiceAccount != "default" || web.LocalAddress != "127.0.0.1" {
		t.Errorf("defaults not applied: %+v", web)
	}
	if len(st.Endpoints) != 1 || st.Endpoints[0].Address != "10.0.0.1" || st.Endpoints[0].PortFor("admin") != 9091 {
		t.Errorf("endpoints = %+v, want api-1 at 10.0.0.1 with admin on target port 9091", st.Endpoints)
	}
}

// TestLoadErrors: each bad input, and the exact message an operator sees.
// Paths are replaced with "mesh.yaml".
func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []string
	}{
		{
			name: "unknown field with a suggestion",
			body: header + strings.Replace(validSpec, "      address: 10.0.0.1", "      adress: 10.0.0.1", 1),
			want: []string{
				`mesh.yaml:16: Mesh m: spec.workloads[0].adress: unknown field "adress" (did you mean "address"?)`,
				`mesh.yaml:13: Mesh m: spec.workloads[0].address: required`,
			},
		},
		{
			name: "invalid address",
			body: header + strings.Replace(validSpec, "10.0.0.2", "10.0.0", 1),
			want: []string{`mesh.yaml:20: Mesh m: spec.workloads[1].address: "10.0.0" is not an IP address`},
		},
		{
			name: "port as a string",
			body: header + strings.Replace(validSpec, "port: 8080, protocol", `port: "8080", protocol`, 1),
			want: []string{`mesh.yaml:10: Mesh m: spec.services[0].ports[0].port: must be a whole number, not "8080"`},
		},
		{
			name: "port out of range",
			body: header + strings.Replace(validSpec, "port: 8080, protocol", "port: 70000, protocol", 1),
			want: []string{
				`mesh.yaml:10: Mesh m: spec.services[0].ports[0].port: 70000 is not a port number (1-65535)`,
				`mesh.yaml:21: Mesh m: spec.workloads[1].upstreams[0].port: service demo/api has no port 8080 (it has 70000, 9090)`,
			},
		},
		{
			name: "unknown protocol",
			body: header + strings.Replace(validSpec, "protocol: http}", "protocol: grpc}", 1),
			want: []string{`mesh.yaml:10: Mesh m: spec.services[0].ports[0].protocol: "grpc" is not a protocol: use http or tcp`},
		},
		{
			name: "upstream to a missing service",
			body: header + strings.Replace(validSpec, "{service: api, port", "{service: apii, port", 1),
			want: []string{`mesh.yaml:21: Mesh m: spec.workloads[1].upstreams[0].service: service "apii" is not defined in namespace demo`},
		},
		{
			name: "upstream to a missing port",
			body: header + strings.Replace(validSpec, "port: 8080, localPort", "port: 8081, localPort", 1),
			want: []string{`mesh.yaml:21: Mesh m: spec.workloads[1].upstreams[0].port: service demo/api has no port 8081 (it has 8080, 9090)`},
		},
		{
			name: "upstream port left out on a service with several",
			body: header + strings.Replace(validSpec, "{service: api, port: 8080, localPort: 18080}", "{service: api}", 1),
			want: []string{`mesh.yaml:21: Mesh m: spec.workloads[1].upstreams[0].port: required: service demo/api has several ports (8080, 9090)`},
		},
		{
			name: "backs a service of another namespace",
			body: header + strings.Replace(validSpec, "      namespace: demo\n      serviceAccount: api", "      namespace: prod\n      serviceAccount: api", 1),
			want: []string{`mesh.yaml:17: Mesh m: spec.workloads[0].services[0]: service "api" is not defined in namespace prod`},
		},
		{
			name: "duplicate workload and address",
			body: header + validSpec + "    - {name: api-1, namespace: demo, address: 10.0.0.1}\n",
			want: []string{
				`mesh.yaml:22: Mesh m: spec.workloads[2].name: workload demo/api-1 is already defined at spec.workloads[0]`,
				`mesh.yaml:22: Mesh m: spec.workloads[2].address: address 10.0.0.1 is already the address of workload demo/api-1`,
			},
		},
		{
			name: "local port where the app listens",
			body: header + strings.Replace(validSpec, "      services: [api]\n", "      services: [api]\n      upstreams: [{service: api, port: 8080}]\n", 1),
			want: []string{`mesh.yaml:18: Mesh m: spec.workloads[0].upstreams[0].localPort: the app listens on 127.0.0.1:8080 for service api port 8080; pick another local port`},
		},
		{
			name: "reserved local port",
			body: header + strings.Replace(validSpec, "localPort: 18080", "localPort: 15001", 1),
			want: []string{`mesh.yaml:21: Mesh m: spec.workloads[1].upstreams[0].localPort: ports 15000-15099 are reserved for the sidecar`},
		},
		{
			name: "bad names",
			body: header + strings.Replace(strings.Replace(validSpec, "name: api-1", "name: API_1", 1), "serviceAccount: api", "serviceAccount: Api", 1),
			want: []string{
				`mesh.yaml:13: Mesh m: spec.workloads[0].name: "API_1" must be lower-case letters, digits and '-', starting and ending with a letter or digit`,
				`mesh.yaml:15: Mesh m: spec.workloads[0].serviceAccount: "Api" must be lower-case letters, digits, '-' and '.'`,
			},
		},
		{
			name: "trust domain as a URI",
			body: header + "  trustDomain: spiffe://example.org\n" + validSpec,
			want: []string{`mesh.yaml:6: Mesh m: spec.trustDomain: "spiffe://example.org" must be a bare name such as example.org, not a URI`},
		},
		{
			name: "label value as a number",
			body: header + strings.Replace(validSpec, "      serviceAccount: api\n", "      serviceAccount: api\n      labels: {version: 2}\n", 1),
			want: []string{`mesh.yaml:16: Mesh m: spec.workloads[0].labels["version"]: must be a string (quote it: "2")`},
		},
		{
			name: "key set twice",
			body: header + strings.Replace(validSpec, "      address: 10.0.0.2\n", "      address: 10.0.0.2\n      address: 10.0.0.3\n", 1),
			want: []string{`mesh.yaml:21: Mesh m: spec.workloads[1].address: "address" is set twice (first on line 20)`},
		},
		{
			name: "wrong apiVersion and unknown kind",
			body: "apiVersion: v1\nkind: Meshh\nmetadata: {name: m}\nspec: {}\n",
			want: []string{
				`mesh.yaml:1: apiVersion: "v1" is not supported; use bulwark.dev/v1alpha1`,
				`mesh.yaml:2: kind: unknown kind "Meshh"; expected one of AccessPolicy, MTLSPolicy, Mesh`,
			},
		},
		{
			name: "no name",
			body: "apiVersion: bulwark.dev/v1alpha1\nkind: Mesh\nmetadata: {}\nspec: {}\n",
			want: []string{`mesh.yaml:3: Mesh : metadata.name: required`},
		},
		{
			name: "YAML syntax error",
			body: header + "  services: [\n",
			want: []string{`mesh.yaml:6: invalid YAML: did not find expected node content`},
		},
		{
			name: "two meshes",
			body: header + validSpec + "---\n" + strings.Replace(header, "name: m", "name: n", 1) + "  {}\n",
			want: []string{`mesh.yaml:23: Mesh n: a mesh has one Mesh document; another is Mesh m at mesh.yaml:1`},
		},
		{
			name: "weaker mesh mode without a reason",
			body: header + "  mtls: {mode: PERMISSIVE}\n" + validSpec,
			want: []string{`mesh.yaml:6: Mesh m: spec.mtls.exception: required: a mode weaker than STRICT needs an exception with a reason`},
		},
		{
			name: "policy: weaker port mode without a reason, bad port, bad mode",
			body: header + validSpec + `---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: legacy, namespace: demo}
spec:
  portModes: {"9091": DISABLE, "http": PERMISSIVE, "8080": LAX}
`,
			want: []string{
				`mesh.yaml:27: MTLSPolicy demo/legacy: spec.portModes["8080"]: "LAX" is not a mode: use STRICT, PERMISSIVE or DISABLE`,
				`mesh.yaml:27: MTLSPolicy demo/legacy: spec.portModes["http"]: "http" is not a port number (1-65535)`,
				`mesh.yaml:27: MTLSPolicy demo/legacy: spec.exception: required: a mode weaker than STRICT needs an exception with a reason`,
			},
		},
		{
			name: "policy: empty reason and bad date",
			body: header + validSpec + `---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: legacy, namespace: demo}
spec:
  mode: PERMISSIVE
  exception: {reason: " ", expires: "next year"}
`,
			want: []string{
				`mesh.yaml:28: MTLSPolicy demo/legacy: spec.exception.reason: required: say why this traffic may skip mutual TLS`,
				`mesh.yaml:28: MTLSPolicy demo/legacy: spec.exception.expires: "next year" is not a date (YYYY-MM-DD)`,
			},
		},
		{
			name: "policies that overlap",
			body: header + strings.Replace(validSpec, "      serviceAccount: api\n", "      serviceAccount: api\n      labels: {app: api, tier: back}\n", 1) + `---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: a, namespace: demo}
spec: {selector: {matchLabels: {app: api}}, mode: STRICT}
---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: b, namespace: demo}
spec: {selector: {matchLabels: {tier: back}}, mode: STRICT}
---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: c, namespace: demo}
spec: {mode: STRICT}
---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: d, namespace: demo}
spec: {mode: STRICT}
`,
			want: []string{
				`mesh.yaml:32: MTLSPolicy demo/b: spec.selector: picks workload demo/api-1, which demo/a also picks; one workload, one policy`,
				`mesh.yaml:42: MTLSPolicy demo/d: spec.selector: namespace demo already has a policy for all its workloads, demo/c; give this one a selector or merge them`,
			},
		},
		{
			name: "no mesh",
			body: "# nothing here\n",
			want: []string{`mesh.yaml: no Mesh document found`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, tt.body)
			_, err := Load(context.Background(), []string{p})
			if err == nil {
				t.Fatal("Load accepted an invalid file")
			}
			var got []string
			for _, e := range Errors(err) {
				got = append(got, strings.ReplaceAll(e.Error(), p, "mesh.yaml"))
			}
			for _, w := range tt.want {
				found := false
				for _, g := range got {
					if strings.HasPrefix(g, w) {
						found = true
					}
				}
				if !found {
					t.Errorf("missing error\n  %s\ngot:\n  %s", w, strings.Join(got, "\n  "))
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("got %d errors, want %d:\n  %s", len(got), len(tt.want), strings.Join(got, "\n  "))
			}
		})
	}
}
