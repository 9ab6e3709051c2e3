package kube

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/kinds"
)

func ns(name string, inMesh bool) *corev1.Namespace {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if inMesh {
		n.Labels = map[string]string{MeshLabel: MeshLabelValue}
	}
	return n
}

func pod(namespace, name, sa, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec:   corev1.PodSpec{ServiceAccountName: sa},
		Status: corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning}}
}

func service(namespace, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
}

func slice(namespace, svc, portName string, port int32, ready bool, pods map[string]string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: namespace, Name: fmt.Sprintf("%s-%d", svc, len(pods)+int(port)+boolInt(ready)), Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port}},
	}
	for name, ip := range pods {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: name}})
	}
	return sl
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// policy makes a policy object as the dynamic informer caches it.
func policy(k *kinds.Kind, namespace, name string, generation int64, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "bulwark.dev/v1alpha1", "kind": k.Name, "spec": spec}}
	u.SetNamespace(namespace)
	u.SetName(name)
	u.SetGeneration(generation)
	return u
}

func allowFrom(sa string) map[string]any {
	return map[string]any{"selector": map[string]any{"service": "api"}, "action": "ALLOW",
		"rules": []any{map[string]any{"from": []any{map[string]any{"serviceAccounts": []any{sa}}}}}}
}

func mtlsSpec(mode string, labels map[string]any) map[string]any {
	s := map[string]any{"mode": mode}
	if mode != "STRICT" {
		s["exception"] = map[string]any{"reason": "legacy callers"}
	}
	if labels != nil {
		s["selector"] = map[string]any{"matchLabels": labels}
	}
	return s
}

func baseInputs() Inputs {
	return Inputs{
		Namespaces: []*corev1.Namespace{ns("demo", true), ns("outside", false), ns("bulwark-system", false)},
		Services: []*corev1.Service{
			service("demo", "api", "10.96.0.10", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("web")}),
			service("outside", "other", "10.96.0.11", corev1.ServicePort{Name: "http", Port: 80}),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			slice("demo", "api", "http", 8080, true, map[string]string{"api-1": "10.0.0.1"}),
			slice("demo", "api", "http", 8080, false, map[string]string{"api-2": "10.0.0.2"}),
		},
		Pods: []*corev1.Pod{
			pod("demo", "api-1", "api", "10.0.0.1", map[string]string{"app": "api", "tier": "web"}),
			pod("demo", "api-2", "", "10.0.0.2", map[string]string{"app": "api"}),
			pod("outside", "other-1", "other", "10.0.0.3", nil),
		},
		Policies: map[*kinds.Kind][]*unstructured.Unstructured{},
	}
}

func TestMapWorkloadsServicesAndEndpoints(t *testing.T) {
	res := NewMapper(MapperConfig{RootNamespace: "bulwark-system"}).Map(baseInputs())
	st := res.State
	if got := strings.Join(res.MeshNamespaces, ","); got != "demo" {
		t.Errorf("mesh namespaces %q, want demo", got)
	}
	if len(st.Services) != 1 || st.Services[0].Key() != "demo/api" || st.Services[0].Address != "10.96.0.10" ||
		st.Services[0].Ports[0].TargetPort != 8080 || st.Services[0].Ports[0].Protocol != model.ProtocolHTTP {
		t.Errorf("services: %+v (want demo/api, the named target port resolved to 8080, http)", st.Services)
	}
	if len(st.Workloads) != 2 {
		t.Fatalf("workloads: %d, want the two pods of demo", len(st.Workloads))
	}
	for _, w := range st.Workloads {
		switch w.Name {
		case "api-1":
			if w.ServiceAccount != "api" || !w.Backs("api") || !w.Transparent() {
				t.Errorf("api-1: %+v", w)
			}
		case "api-2":
			if w.ServiceAccount != model.DefaultServiceAccount {
				t.Errorf("api-2 without a service account is %q, want default", w.ServiceAccount)
			}
		}
	}
	ready := map[string]bool{}
	for _, e := range st.Endpoints {
		ready[e.Address] = e.Ready
	}
	if !ready["10.0.0.1"] || ready["10.0.0.2"] || len(ready) != 2 {
		t.Errorf("endpoints ready: %v, want 10.0.0.1 ready and 10.0.0.2 not", ready)
	}
}

func TestMapKeepsTheLastGoodPolicyAndAsksForStatus(t *testing.T) {
	m := NewMapper(MapperConfig{})
	in := baseInputs()
	in.Policies[kinds.AccessPolicy] = []*unstructured.Unstructured{policy(kinds.AccessPolicy, "demo", "api-from-frontend", 1, allowFrom("frontend"))}
	res := m.Map(in)
	if len(res.State.Access) != 1 || len(res.StatusWrites) != 1 || res.StatusWrites[0].Condition.Reason != ReasonAccepted {
		t.Fatalf("generation 1: access %d, writes %+v", len(res.State.Access), res.StatusWrites)
	}

	// The status now says Accepted: mapping again asks for no write.
	accepted := in.Policies[kinds.AccessPolicy][0]
	setCondition(t, accepted, res.StatusWrites[0].Condition)
	if res = m.Map(in); len(res.StatusWrites) != 0 {
		t.Errorf("a status already right is written again: %+v", res.StatusWrites)
	}

	// An invalid edit keeps generation 1 in force.
	bad := allowFrom("Not A Name!")
	in.Policies[kinds.AccessPolicy] = []*unstructured.Unstructured{policy(kinds.AccessPolicy, "demo", "api-from-frontend", 2, bad)}
	res = m.Map(in)
	if len(res.State.Access) != 1 || res.State.Access[0].Spec.Rules[0].From[0].ServiceAccounts[0] != "frontend" {
		t.Fatalf("the last good generation is not in force: %+v", res.State.Access)
	}
	c := res.StatusWrites[0].Condition
	if c.Reason != ReasonInvalid || c.ObservedGeneration != 2 || !strings.Contains(c.Message, "spec.rules[0].from[0].serviceAccounts[0]") ||
		!strings.HasSuffix(c.Message, "(generation 1 stays in force)") {
		t.Errorf("condition: %+v", c)
	}

	// Deleted: forgotten, so a new invalid object of that name is not in force.
	in.Policies[kinds.AccessPolicy] = nil
	m.Map(in)
	in.Policies[kinds.AccessPolicy] = []*unstructured.Unstructured{policy(kinds.AccessPolicy, "demo", "api-from-frontend", 1, bad)}
	if res = m.Map(in); len(res.State.Access) != 0 || !strings.HasSuffix(res.StatusWrites[0].Condition.Message, "(not in force)") {
		t.Errorf("after deletion: access %+v, status %+v", res.State.Access, res.StatusWrites)
	}
}

// TestMapRefusesWhatTheMeshFileRefuses: two MTLSPolicies picking one
// workload are refused in Kubernetes as in a mesh file, with the same
// words; the first by name stays in force.
func TestMapRefusesWhatTheMeshFileRefuses(t *testing.T) {
	in := baseInputs()
	in.Policies[kinds.MTLSPolicy] = []*unstructured.Unstructured{
		policy(kinds.MTLSPolicy, "demo", "a-by-app", 1, mtlsSpec("PERMISSIVE", map[string]any{"app": "api"})),
		policy(kinds.MTLSPolicy, "demo", "b-by-tier", 3, mtlsSpec("STRICT", map[string]any{"tier": "web"})),
	}
	res := NewMapper(MapperConfig{}).Map(in)
	if len(res.State.MTLS) != 1 || res.State.MTLS[0].Name != "a-by-app" {
		t.Fatalf("in force: %+v, want a-by-app only", res.State.MTLS)
	}
	var found bool
	for _, w := range res.StatusWrites {
		if w.Object.GetName() != "b-by-tier" {
			continue
		}
		found = true
		if w.Condition.Reason != ReasonConflict || w.Condition.Status != metav1.ConditionFalse ||
			!strings.Contains(w.Condition.Message, "spec.selector: picks workload demo/api-1, which demo/a-by-app also picks") {
			t.Errorf("b-by-tier: %+v", w.Condition)
		}
	}
	if !found {
		t.Error("no status for the refused policy")
	}
}

func TestMapPlacesPoliciesByNamespace(t *testing.T) {
	in := baseInputs()
	in.Policies[kinds.MTLSPolicy] = []*unstructured.Unstructured{
		policy(kinds.MTLSPolicy, "bulwark-system", "mesh", 1, mtlsSpec("PERMISSIVE", nil)),
		policy(kinds.MTLSPolicy, "outside", "ignored", 1, mtlsSpec("STRICT", nil)),
	}
	in.Policies[kinds.AccessPolicy] = []*unstructured.Unstructured{policy(kinds.AccessPolicy, "outside", "x", 1, allowFrom("a"))}
	res := NewMapper(MapperConfig{RootNamespace: "bulwark-system"}).Map(in)
	if res.State.Mesh.MTLS.Mode != model.MTLSPermissive || res.State.Mesh.MTLS.Exception == nil {
		t.Errorf("mesh-wide mode: %+v, want PERMISSIVE from the root namespace", res.State.Mesh.MTLS)
	}
	if len(res.State.MTLS)+len(res.State.Access) != 0 {
		t.Errorf("policies outside the mesh in force: %+v %+v", res.State.MTLS, res.State.Access)
	}
	if len(res.StatusWrites) != 3 {
		t.Errorf("status writes: %d, want one per object (they are valid, wherever they are)", len(res.StatusWrites))
	}
}

func setCondition(t *testing.T, u *unstructured.Unstructured, c metav1.Condition) {
	t.Helper()
	m := map[string]any{"type": c.Type, "status": string(c.Status), "reason": c.Reason, "message": c.Message,
		"observedGeneration": c.ObservedGeneration, "lastTransitionTime": "2026-11-29T00:00:00Z"}
	if err := unstructured.SetNestedSlice(u.Object, []any{m}, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
}
