package model

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
)

// pairwiseOverlap is the definition CheckMTLSOverlap must keep, written
// the slow way: each workload against each policy. It returns, per policy
// at fault, the first workload it shares and who else picks it.
func pairwiseOverlap(policies []*MTLSPolicy, workloads []*Workload) map[string]string {
	sorted := slices.Clone(policies)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Key() < sorted[j].Key() })
	out := map[string]string{}
	for _, w := range workloads {
		var picked []*MTLSPolicy
		for _, p := range sorted {
			if !p.Spec.Selector.Empty() && p.Namespace == w.Namespace && p.Spec.Selector.Matches(w.Labels) {
				picked = append(picked, p)
			}
		}
		for _, p := range picked[min(1, len(picked)):] {
			if _, seen := out[p.Key()]; !seen {
				out[p.Key()] = fmt.Sprintf("picks workload %s, which %s also picks", w.Key(), picked[0].Key())
			}
		}
	}
	return out
}

// TestCheckMTLSOverlapAgreesWithPairwise: over random meshes, the indexed
// check blames the same policies as comparing every pair, naming the same
// workload and owner.
func TestCheckMTLSOverlapAgreesWithPairwise(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys, values := []string{"app", "tier", "zone"}, []string{"a", "b"}
	labels := func(max int) map[string]string {
		m := map[string]string{}
		for range rng.IntN(max + 1) {
			m[keys[rng.IntN(len(keys))]] = values[rng.IntN(len(values))]
		}
		return m
	}
	for round := range 2000 {
		var workloads []*Workload
		for i := range rng.IntN(70) {
			workloads = append(workloads, &Workload{Namespace: []string{"x", "y"}[rng.IntN(2)], Name: fmt.Sprint("w", i), Labels: labels(3)})
		}
		var policies []*MTLSPolicy
		for i := range rng.IntN(8) {
			p := &MTLSPolicy{Namespace: []string{"x", "y"}[rng.IntN(2)], Name: fmt.Sprint("p", i)}
			if sel := labels(2); len(sel) > 0 {
				p.Spec.Selector = &Selector{MatchLabels: sel}
			}
			policies = append(policies, p)
		}
		want := pairwiseOverlap(policies, workloads)
		got := CheckMTLSOverlap(policies, workloads)
		for key, errs := range got {
			var selectorErr string
			for _, e := range errs {
				if msg := e.Error(); strings.Contains(msg, "picks workload") {
					selectorErr = msg
				}
			}
			if want[key] == "" && selectorErr != "" {
				t.Fatalf("round %d: %s blamed (%s); pairwise blames %v", round, key, selectorErr, want)
			}
			if want[key] != "" && !strings.Contains(selectorErr, want[key]+";") {
				t.Fatalf("round %d: %s: got %v, want %q", round, key, errs, want[key])
			}
		}
		for key := range want {
			if got[key] == nil {
				t.Fatalf("round %d: %s not blamed; pairwise: %s", round, key, want[key])
			}
		}
	}
}

// TestCheckMTLSOverlapOneProblemPerPolicy: a policy that shares many
// workloads is one problem, saying how many, not one per workload.
func TestCheckMTLSOverlapOneProblemPerPolicy(t *testing.T) {
	var workloads []*Workload
	for i := range 300 {
		workloads = append(workloads, &Workload{Namespace: "x", Name: fmt.Sprint("w", i), Labels: map[string]string{"app": "a"}})
	}
	var policies []*MTLSPolicy
	for i := range 300 {
		policies = append(policies, &MTLSPolicy{Namespace: "x", Name: fmt.Sprintf("p%03d", i), Spec: MTLSPolicySpec{Selector: &Selector{MatchLabels: map[string]string{"app": "a"}}}})
	}
	got := CheckMTLSOverlap(policies, workloads)
	if len(got) != 299 {
		t.Fatalf("%d policies blamed, want 299", len(got))
	}
	errs := got["x/p001"]
	if len(errs) != 1 || errs[0].Error() != "spec.selector: picks workload x/w0, which x/p000 also picks; one workload, one policy (and 299 more workloads another policy also picks)" {
		t.Errorf("x/p001: %v", errs)
	}
}
