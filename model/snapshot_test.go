package model

import (
	"maps"
	"slices"
	"testing"
)

func TestChangedSinceNamesTheTablesThatDiffer(t *testing.T) {
	s := NewStore()
	if _, err := s.ReplaceState(state("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	moved := state("10.0.0.2")
	moved.Workloads = state("10.0.0.1").Workloads
	twice := state("10.0.0.2")
	twice.Workloads = state("10.0.0.1").Workloads
	twice.Services[0].Ports[0].Port = 81
	for _, tc := range []struct {
		name   string
		writes []*State
		want   []string
	}{
		{name: "no write", want: nil},
		{name: "the same state, as new objects", writes: []*State{state("10.0.0.1")}, want: nil},
		{name: "an endpoint moved", writes: []*State{moved}, want: []string{TableEndpoints}},
		{name: "two writes", writes: []*State{moved, twice}, want: []string{TableServices, TableEndpoints}},
		// The store does not look back: what was put back is new.
		{name: "a write and its undoing", writes: []*State{moved, state("10.0.0.1")}, want: []string{TableEndpoints}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.ReplaceState(state("10.0.0.1")); err != nil {
				t.Fatal(err)
			}
			prev := s.Snapshot()
			for _, w := range tc.writes {
				if _, err := s.ReplaceState(w); err != nil {
					t.Fatal(err)
				}
			}
			got := slices.Sorted(maps.Keys(s.Snapshot().ChangedSince(prev)))
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("changed = %v, want %v", got, want)
			}
		})
	}
}

func TestChangedSinceNilIsEveryTable(t *testing.T) {
	got := NewStore().Snapshot().ChangedSince(nil)
	if len(got) != len(Tables) {
		t.Errorf("changed = %v, want every table", got)
	}
}
