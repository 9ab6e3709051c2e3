package meshfile

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

// FuzzLoad feeds arbitrary bytes through the whole mesh file path:
// decoding, validation and storing. It must never panic, every error must
// say something, and whatever it accepts must store and resolve. (It
// stays clear of Envoy's protos: instrumenting them for coverage makes
// each run take seconds. The authz tests check what valid policies
// compile to.)
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("../../examples/local/*.yaml")
	more, _ := filepath.Glob("../../xds/testdata/in/*.yaml")
	for _, p := range append(seeds, more...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(header + validSpec))
	f.Add([]byte("apiVersion: bulwark.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: x}\nspec: {selector: {service: a}, action: DENY, rules: [{from: [{namespaces: ['*']}], to: [{paths: ['/a/**/b']}]}]}\n"))
	dir := f.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	now := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := Load(context.Background(), []string{path})
		if err != nil {
			for _, e := range Errors(err) {
				if e.Error() == "" {
					t.Fatalf("an empty error message for %q", data)
				}
			}
			return
		}
		store := model.NewStore()
		if _, err := store.ReplaceState(st); err != nil {
			t.Fatalf("a valid state does not store: %v", err)
		}
		snap := store.Snapshot()
		for _, w := range snap.Workloads() {
			_ = w.Identity(st.Mesh.TrustDomain) // panics on an identity validation let through
			for _, name := range w.Services {
				svc := snap.Service(w.Namespace, name)
				if svc == nil {
					t.Fatalf("workload %s backs %s, which validation let through undefined", w.Key(), name)
				}
				for _, p := range svc.Ports {
					snap.MTLSMode(w, p.TargetPort, now)
				}
			}
		}
		for _, p := range snap.AccessPolicies() {
			for _, r := range p.Spec.Rules {
				for _, o := range r.To {
					for _, raw := range o.Paths {
						if _, err := model.ParsePathPattern(raw); err != nil {
							t.Fatalf("accepted path %q does not parse: %v", raw, err)
						}
					}
				}
			}
		}
	})
}
