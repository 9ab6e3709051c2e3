package xds_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bulwarkmesh/bulwark/internal/golden"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
	"github.com/bulwarkmesh/bulwark/xds"
)

func protos[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}

// TestTranslateGolden translates every mesh in testdata/in for each of its
// workloads and compares each resource type with testdata/out/<mesh>/<ns>.<workload>/.
func TestTranslateGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs in testdata/in: %v", err)
	}
	out := golden.NewDir(t, "testdata/out")
	for _, in := range inputs {
		t.Run(golden.Name(in), func(t *testing.T) {
			st, err := meshfile.Load(context.Background(), []string{in})
			if err != nil {
				t.Fatalf("load %s: %v", in, err)
			}
			store := model.NewStore()
			if _, err := store.ReplaceState(st); err != nil {
				t.Fatal(err)
			}
			snap := store.Snapshot()
			// Fixed, so the golden files do not change as exceptions expire.
			opts := xds.Options{Now: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
			for _, w := range snap.Workloads() {
				r, err := xds.Translate(snap, w, opts)
				if err != nil {
					t.Fatalf("translate %s: %v", w.Key(), err)
				}
				if err := xds.Check(r, contract.Secrets()); err != nil {
					t.Errorf("check %s: %v", w.Key(), err)
				}
				// What the server publishes: the same resources, as checked
				// parts shared between proxies.
				parts, err := xds.NewTranslator(snap, opts).Parts(w)
				if err != nil {
					t.Errorf("parts of %s: %v", w.Key(), err)
				}
				union := xds.Union(parts...)
				if !sameProtos(union.Listeners, r.Listeners) || !sameProtos(union.Clusters, r.Clusters) ||
					!sameProtos(union.Routes, r.Routes) || !sameProtos(union.Endpoints, r.Endpoints) {
					t.Errorf("%s: the union of Parts differs from Translate", w.Key())
				}
				dir := filepath.Join(golden.Name(in), w.Namespace+"."+w.Name)
				out.Compare(filepath.Join(dir, "listeners.yaml"), golden.ProtoYAML(t, protos(r.Listeners)))
				out.Compare(filepath.Join(dir, "routes.yaml"), golden.ProtoYAML(t, protos(r.Routes)))
				out.Compare(filepath.Join(dir, "clusters.yaml"), golden.ProtoYAML(t, protos(r.Clusters)))
				out.Compare(filepath.Join(dir, "endpoints.yaml"), golden.ProtoYAML(t, protos(r.Endpoints)))
			}
		})
	}
	out.Finish()
}

func sameProtos[T proto.Message](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
