package xds_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
	"github.com/bulwarkmesh/bulwark/xds"
)

// TestTranslationIsByteStable: translating the same model twice gives
// byte-identical resources, Any payloads included. Versions are hashes
// of these bytes; any randomness would re-send unchanged configuration
// to every proxy on every change.
func TestTranslationIsByteStable(t *testing.T) {
	st, err := meshfile.Load(context.Background(), []string{"testdata/in/authz.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	store := model.NewStore()
	if _, err := store.ReplaceState(st); err != nil {
		t.Fatal(err)
	}
	snap := store.Snapshot()
	opts := xds.Options{Now: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)}
	w := snap.Workload("shop", "api-1")
	var first [][]byte
	for run := 0; run < 20; run++ {
		r, err := xds.Translate(snap, w, opts)
		if err != nil {
			t.Fatal(err)
		}
		var got [][]byte
		for _, l := range r.Listeners {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, b)
		}
		if run == 0 {
			first = got
			continue
		}
		for i := range got {
			if string(got[i]) != string(first[i]) {
				t.Fatalf("run %d: listener %d serializes differently", run, i)
			}
		}
	}
}
