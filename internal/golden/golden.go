// Package golden compares test output with files under testdata and, when
// tests run with -update, rewrites those files and removes the ones no
// test produced any more.
package golden

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/out")

// Updating reports whether the tests run with -update.
func Updating() bool { return *update }

// ProtoYAML renders messages as a YAML list, the readable form reviewers
// see in golden diffs. Keys are sorted, so output is deterministic.
func ProtoYAML(t testing.TB, msgs []proto.Message) []byte {
	t.Helper()
	list := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		b, err := protojson.MarshalOptions{UseProtoNames: false}.Marshal(m)
		if err != nil {
			t.Fatalf("marshal %T: %v", m, err)
		}
		list = append(list, b)
	}
	b, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	y, err := yaml.JSONToYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// Dir tracks the golden files of one output directory.
type Dir struct {
	t       testing.TB
	root    string
	written map[string]bool
}

// NewDir starts tracking root (e.g. testdata/out). Call Finish when every
// file has been compared.
func NewDir(t testing.TB, root string) *Dir {
	return &Dir{t: t, root: root, written: map[string]bool{}}
}

// Compare checks got against root/rel, or rewrites it with -update.
func (d *Dir) Compare(rel string, got []byte) {
	d.t.Helper()
	path := filepath.Join(d.root, rel)
	d.written[filepath.Clean(path)] = true
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			d.t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			d.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		d.t.Errorf("%s: %v (run the test with -update to create it)", path, err)
		return
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		d.t.Errorf("%s differs from the golden file (-want +got); run with -update if the change is intended:\n%s", path, diff)
	}
}

// Finish reports golden files that no test wrote, or removes them with
// -update.
func (d *Dir) Finish() {
	d.t.Helper()
	_ = filepath.WalkDir(d.root, func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() || d.written[filepath.Clean(path)] {
			return nil
		}
		if *update {
			_ = os.Remove(path)
			return nil
		}
		d.t.Errorf("%s is stale: no test produces it (run with -update to remove it)", path)
		return nil
	})
	if *update {
		removeEmptyDirs(d.root)
	}
}

func removeEmptyDirs(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			p := filepath.Join(root, e.Name())
			removeEmptyDirs(p)
			if rest, _ := os.ReadDir(p); len(rest) == 0 {
				_ = os.Remove(p)
			}
		}
	}
}

// Name turns a test input file name into a directory name.
func Name(file string) string {
	return strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
}
