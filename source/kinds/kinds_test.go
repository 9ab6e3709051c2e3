package kinds

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/model"
)

var mesh = &model.Mesh{TrustDomain: "cluster.local"}

func mtls(mode string, labels map[string]string) *v1alpha1.MTLSPolicySpec {
	s := &v1alpha1.MTLSPolicySpec{Mode: v1alpha1.MTLSMode(mode)}
	if labels != nil {
		s.Selector = &v1alpha1.Selector{MatchLabels: labels}
	}
	if mode != "STRICT" {
		s.Exception = &v1alpha1.Exception{Reason: "migration"}
	}
	return s
}

func TestLastGoodKeepsTheLastValidGeneration(t *testing.T) {
	lg := NewLastGood()
	meta := func(gen int64) Meta { return Meta{Namespace: "demo", Name: "p", Generation: gen} }

	obj, ok, v := lg.Decide(MTLSPolicy, meta(1), mtls("PERMISSIVE", nil), nil, mesh)
	if !ok || v.Err != nil || obj.Value.(*model.MTLSPolicy).Spec.Mode != model.MTLSPermissive {
		t.Fatalf("generation 1: ok=%v err=%v", ok, v.Err)
	}
	// An invalid edit: the mode is misspelt. Generation 1 stays.
	obj, ok, v = lg.Decide(MTLSPolicy, meta(2), mtls("LOOSE", nil), nil, mesh)
	if !ok || v.Err == nil || v.Kept != 1 || obj.Value.(*model.MTLSPolicy).Spec.Mode != model.MTLSPermissive {
		t.Fatalf("generation 2: ok=%v err=%v kept=%d", ok, v.Err, v.Kept)
	}
	c := v.Condition()
	if c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonInvalid || c.ObservedGeneration != 2 ||
		!strings.Contains(c.Message, `spec.mode: "LOOSE" is not a mode`) || !strings.HasSuffix(c.Message, "(generation 1 stays in force)") {
		t.Errorf("condition: %+v", c)
	}
	// Deleted, then created again invalid: nothing to fall back to.
	lg.Sweep()
	lg.Sweep()
	if _, ok, v = lg.Decide(MTLSPolicy, meta(3), mtls("LOOSE", nil), nil, mesh); ok || v.Kept != 0 {
		t.Fatalf("after deletion: ok=%v kept=%d", ok, v.Kept)
	}
	if c := v.Condition(); !strings.HasSuffix(c.Message, "(not in force)") {
		t.Errorf("condition: %+v", c)
	}
}

func TestSettleRefusesOverlappingMTLSPolicies(t *testing.T) {
	st := &model.State{Workloads: []*model.Workload{{Namespace: "demo", Name: "api-1", Labels: map[string]string{"app": "api", "tier": "web"}}}}
	var objs []Object
	for name, spec := range map[string]*v1alpha1.MTLSPolicySpec{
		"a-by-app":  mtls("PERMISSIVE", map[string]string{"app": "api"}),
		"b-by-tier": mtls("STRICT", map[string]string{"tier": "web"}),
		"ns":        mtls("STRICT", nil),
	} {
		o, err := MTLSPolicy.Accept(Meta{Namespace: "demo", Name: name}, spec, mesh)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	refused := Settle(st, objs)
	if len(refused) != 1 {
		t.Fatalf("refused %v, want b-by-tier only", refused)
	}
	err := refused[Ref{"MTLSPolicy", "demo", "b-by-tier"}]
	if err == nil || !strings.Contains(err.Error(), "picks workload demo/api-1, which demo/a-by-app also picks") {
		t.Fatalf("refusal: %v", err)
	}
	if c := (Verdict{Generation: 4, Err: err}).Condition(); c.Reason != v1alpha1.ReasonConflict {
		t.Errorf("reason %q, want Conflict", c.Reason)
	}
	var names []string
	for _, p := range st.MTLS {
		names = append(names, p.Name)
	}
	if strings.Join(names, ",") != "a-by-app,ns" {
		t.Errorf("in force: %v", names)
	}
}

func TestConditionMessageIsBounded(t *testing.T) {
	long := &model.FieldError{Path: "spec.rules", Detail: strings.Repeat("x", 3*MaxMessage)}
	c := Verdict{Generation: 1, Err: long}.Condition()
	if len(c.Message) > MaxMessage+100 {
		t.Errorf("message of %d bytes", len(c.Message))
	}
}

func TestAcceptRefusesAMissingOrForeignSpec(t *testing.T) {
	if _, err := AccessPolicy.Accept(Meta{Namespace: "demo", Name: "p"}, (*v1alpha1.AccessPolicySpec)(nil), mesh); err == nil || err.Error() != "spec: required" {
		t.Errorf("nil spec: %v", err)
	}
	if _, err := AccessPolicy.Accept(Meta{Namespace: "demo", Name: "p"}, mtls("STRICT", nil), mesh); err == nil {
		t.Error("an MTLSPolicy spec accepted as an AccessPolicy")
	}
}
