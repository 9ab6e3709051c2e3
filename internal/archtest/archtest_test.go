package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/bulwarkmesh/bulwark"

// mod names a package pattern of this module: "xds/..." is
// github.com/bulwarkmesh/bulwark/xds and everything under it.
func mod(rel string) string { return module + "/" + rel }

// rule forbids every package matching from to depend, directly or
// through others, on a package matching deny, unless it also matches
// allow. Patterns are import paths; a trailing "/..." also matches
// everything under the path.
type rule struct {
	name  string
	why   string
	from  []string
	deny  []string
	allow []string
}

// sidecarForbidden is the control plane, as the sidecar must not see it.
var sidecarForbidden = []string{
	mod("xds/..."), mod("identity/issuer/..."), mod("ca/..."), mod("authz/..."),
	mod("source/..."), mod("identity/..."), mod("controlplane/..."),
}

func rules() []rule {
	return []rule{
		{
			name: "sidecar",
			why:  "the agent, its SDS server and the bootstrap know the control plane only through package contract",
			from: []string{mod("sidecar/agent/..."), mod("sds/..."), mod("sidecar/bootstrap/...")},
			deny: sidecarForbidden,
		},
		{
			name:  "model",
			why:   "the model imports nothing of this module, of client-go or of Envoy's protos",
			from:  []string{mod("model/...")},
			deny:  []string{module + "/...", "k8s.io/client-go/...", "github.com/envoyproxy/go-control-plane/..."},
			allow: []string{mod("model/...")},
		},
		{
			name: "sources",
			why:  "sources write the model; they know nothing of its translation into Envoy configuration, nor of identity",
			from: []string{mod("source/...")},
			deny: []string{mod("xds/..."), mod("authz/..."), mod("ca/..."), mod("identity/..."), mod("controlplane/...")},
		},
		{
			name: "kinds",
			why:  "the policy kinds are read by both sources, so they do no I/O and know neither of them",
			from: []string{mod("source/kinds/...")},
			deny: []string{"k8s.io/client-go/...", "github.com/envoyproxy/go-control-plane/...", mod("source/meshfile/..."), mod("source/kube/...")},
		},
		{
			name:  "api",
			why:   "the public schema is what users write; it imports nothing of ours, so it cannot lean on internals",
			from:  []string{mod("api/v1alpha1/...")},
			deny:  []string{module + "/...", "k8s.io/client-go/..."},
			allow: []string{mod("api/v1alpha1/...")},
		},
		{
			name:  "leaves",
			why:   "the contract and the encoding helpers are shared by both sides, so they import nothing else of ours",
			from:  []string{mod("sidecar/contract/..."), mod("internal/pemutil/..."), mod("internal/protoany/..."), mod("internal/bounded/...")},
			deny:  []string{module + "/..."},
			allow: []string{mod("sidecar/contract/..."), mod("internal/pemutil/..."), mod("internal/protoany/..."), mod("internal/bounded/...")},
		},
	}
}

func match(pattern, path string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "/..."); ok {
		return path == prefix || strings.HasPrefix(path, prefix+"/")
	}
	return path == pattern
}

func matchAny(patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return match(p, path) })
}

// violations returns one line per package that breaks a rule, with the
// chain of imports that leads to the forbidden package, and an error for
// a rule whose from matches nothing (a renamed package must not turn a
// rule off silently). imports maps each package to its direct imports.
func violations(imports map[string][]string, rs []rule) ([]string, error) {
	var out []string
	var errs []error
	roots := slices.Sorted(func(yield func(string) bool) {
		for p := range imports {
			if !yield(p) {
				return
			}
		}
	})
	for _, r := range rs {
		matched := false
		for _, root := range roots {
			if !matchAny(r.from, root) {
				continue
			}
			matched = true
			for _, chain := range forbidden(imports, root, r) {
				out = append(out, fmt.Sprintf("%s rule (%s): %s", r.name, r.why, strings.Join(chain, " -> ")))
			}
		}
		if !matched {
			errs = append(errs, fmt.Errorf("%s rule: no package matches %v", r.name, r.from))
		}
	}
	return out, errors.Join(errs...)
}

// forbidden walks breadth first from root and returns the shortest
// import chain to each forbidden package it reaches, sorted by target.
// It does not walk into a forbidden package (what that one imports is
// its own business) nor into another package the rule checks (that one
// is blamed for its own imports), so each line names the package to fix.
func forbidden(imports map[string][]string, root string, r rule) [][]string {
	parent := map[string]string{root: ""}
	queue := []string{root}
	var hits []string
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, q := range imports[p] {
			if _, seen := parent[q]; seen {
				continue
			}
			parent[q] = p
			switch {
			case matchAny(r.deny, q) && !matchAny(r.allow, q):
				hits = append(hits, q)
			case !matchAny(r.from, q):
				queue = append(queue, q)
			}
		}
	}
	slices.Sort(hits)
	var chains [][]string
	for _, h := range hits {
		var chain []string
		for p := h; p != ""; p = parent[p] {
			chain = append(chain, p)
		}
		slices.Reverse(chain)
		chains = append(chains, chain)
	}
	return chains
}

// goList returns the import graph of the packages matching patterns and
// of everything they depend on, as `go list -deps` sees it for this
// platform (test files excluded).
func goList(t *testing.T, patterns []string) map[string][]string {
	t.Helper()
	args := append([]string{"list", "-deps", "-json=ImportPath,Imports,Error"}, patterns...)
	cmd := exec.Command("go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	graph := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Imports    []string
			Error      *struct{ Err string }
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
		graph[p.ImportPath] = p.Imports
	}
	return graph
}

// TestDependencyRules checks the module's real import graph.
func TestDependencyRules(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("this test runs the go command: %v", err)
	}
	var patterns []string
	for _, r := range rules() {
		patterns = append(patterns, r.from...)
	}
	slices.Sort(patterns)
	patterns = slices.Compact(patterns)
	bad, err := violations(goList(t, patterns), rules())
	if err != nil {
		t.Error(err)
	}
	for _, v := range bad {
		t.Error(v)
	}
}

// TestViolationsNameTheChain checks the checker on a made-up graph.
func TestViolationsNameTheChain(t *testing.T) {
	graph := map[string][]string{
		mod("sidecar/agent"):     {mod("sidecar/bootstrap"), "fmt"},
		mod("sidecar/bootstrap"): {mod("xds"), mod("sidecar/contract")},
		mod("xds"):               {mod("model")},
		mod("sidecar/contract"):  {"github.com/envoyproxy/go-control-plane/envoy/config/core/v3"},
		mod("model"):             {"fmt"},
		mod("model/sub"):         {mod("model"), "k8s.io/client-go/kubernetes"},
		mod("sds"):               {mod("internal/pemutil")},
		mod("source/meshfile"):   {mod("model")},
		mod("source/kinds"):      {mod("model")},
		mod("api/v1alpha1"):      {"fmt"},
		mod("internal/pemutil"):  {mod("ca")},
		mod("ca"):                {"fmt"},
		"fmt":                    {},
		"github.com/envoyproxy/go-control-plane/envoy/config/core/v3": {},
		"k8s.io/client-go/kubernetes":                                 {"k8s.io/client-go/rest"},
		"k8s.io/client-go/rest":                                       {},
	}
	got, err := violations(graph, rules())
	if err != nil {
		t.Fatal(err)
	}
	// agent reaches xds only through bootstrap, which is blamed; the walk
	// stops at the first forbidden package, so client-go's own packages
	// are not listed one by one.
	want := []string{
		"sidecar rule (" + rules()[0].why + "): " + mod("sds") + " -> " + mod("internal/pemutil") + " -> " + mod("ca"),
		"sidecar rule (" + rules()[0].why + "): " + mod("sidecar/bootstrap") + " -> " + mod("xds"),
		"model rule (" + rules()[1].why + "): " + mod("model/sub") + " -> k8s.io/client-go/kubernetes",
		"leaves rule (" + rules()[5].why + "): " + mod("internal/pemutil") + " -> " + mod("ca"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A rule that matches no package is an error, not a pass.
	if _, err := violations(map[string][]string{"fmt": {}}, rules()[:1]); err == nil {
		t.Error("a rule matching no package passed")
	}
}
