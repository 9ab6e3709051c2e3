package v1alpha1_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestGeneratedFilesAreCurrent fails when the committed CRDs or DeepCopy
// methods differ from what `make generate` writes from the types now: a
// field added to a type but missing from the CRD would be pruned by the
// API server without a word.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("unit tier (-short): builds controller-gen; make test runs it")
	}
	tmp := t.TempDir()
	crd := filepath.Join(tmp, "crds.yaml")
	cmd := exec.Command("../../scripts/generate.sh", crd, tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/generate.sh: %v\n%s", err, out)
	}
	for _, f := range []struct{ committed, fresh string }{
		{"../../examples/kind/01-crds.yaml", crd},
		{"zz_generated.deepcopy.go", filepath.Join(tmp, "zz_generated.deepcopy.go")},
	} {
		want, err := os.ReadFile(f.fresh)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f.committed)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("%s is not what the types generate; run make generate and commit the result (-generated +committed):\n%s", f.committed, diff)
		}
	}
}
