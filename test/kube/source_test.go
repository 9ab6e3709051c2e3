package kube

import (
	"slices"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/source/kube"
)

const allowFrontend = `apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: api-from-frontend, namespace: %s}
spec:
  selector: {service: api}
  action: ALLOW
  rules: [{from: [{serviceAccounts: [frontend]}]}]
`

func accessPolicy(t *testing.T, ns, name string, spec map[string]any) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "bulwark.dev/v1alpha1", "kind": "AccessPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
	dyn := dynamicClient(t)
	cur, err := dyn.Resource(kube.AccessPolicyGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		u.SetResourceVersion(cur.GetResourceVersion())
		_, err = dyn.Resource(kube.AccessPolicyGVR).Namespace(ns).Update(ctx, u, metav1.UpdateOptions{})
	} else {
		_, err = dyn.Resource(kube.AccessPolicyGVR).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func allowFrom(sa string) map[string]any {
	return map[string]any{
		"selector": map[string]any{"service": "api"},
		"action":   "ALLOW",
		"rules":    []any{map[string]any{"from": []any{map[string]any{"serviceAccounts": []any{sa}}}}},
	}
}

// waitEDS follows the stream until api's load assignment holds exactly
// want, for at most d.
func waitEDS(t *testing.T, c *adstest.Client, cluster string, want []string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("%s never held %v", cluster, want)
		}
		r := c.Recv(resourcev3.EndpointType, left)
		c.ACK(r, cluster)
		if got := adstest.Addresses(t, r)[cluster]; slices.Equal(got, want) {
			return
		}
	}
}

// TestClusterReachesTheProxy: objects created through client-go become
// a connected proxy's configuration; readiness changes, deletions and an
// API server restart propagate without restarting Bulwark.
func TestClusterReachesTheProxy(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	namespace(t, c, "bulwark-system", false)
	const ns = "src"
	namespace(t, c, ns, true)
	fe := pod(t, c, ns, "frontend-1", "frontend", "10.40.0.1", map[string]string{"app": "frontend"})
	api1 := pod(t, c, ns, "api-1", "api", "10.40.0.2", map[string]string{"app": "api"})
	api2 := pod(t, c, ns, "api-2", "api", "10.40.0.3", map[string]string{"app": "api"})
	svc := service(t, c, ns, "api", 8080)
	slice(t, c, ns, "api", 8080, endpoint{api1, true}, endpoint{api2, true})
	accessPolicy(t, ns, "api-from-frontend", allowFrom("frontend"))

	cp := controlPlane(t, api.admin(), "bulwark-system", "cp-source")
	testwait.Until(t, "the pods to reach the model", 20*time.Second, func() bool {
		return cp.Store.Snapshot().Workload(ns, fe.Name) != nil
	})
	ads := adstest.Dial(t, cp.XDSAddr.String(), ns+"/"+fe.Name, svidFor(t, cp, ns, "frontend"))
	ads.Subscribe(resourcev3.ClusterType)
	cds := ads.Recv(resourcev3.ClusterType, 20*time.Second)
	ads.ACK(cds)
	const cluster = "outbound|8080|api.src"
	if !slices.Contains(adstest.Names(cds), cluster) {
		t.Fatalf("frontend's clusters %v lack %s", adstest.Names(cds), cluster)
	}
	ads.Subscribe(resourcev3.EndpointType, cluster)
	waitEDS(t, ads, cluster, []string{"10.40.0.2", "10.40.0.3"}, 20*time.Second)

	// The service's ClusterIP is the outbound listener's address.
	ads.Subscribe(resourcev3.ListenerType)
	lds := ads.Recv(resourcev3.ListenerType, 10*time.Second)
	ads.ACK(lds)
	found := false
	for _, a := range lds.GetResources() {
		found = found || strings.Contains(string(a.GetValue()), svc.Spec.ClusterIP)
	}
	if !found {
		t.Errorf("no listener on the ClusterIP %s", svc.Spec.ClusterIP)
	}

	// Readiness: api-2 goes not ready, then its pod is deleted.
	slice(t, c, ns, "api", 8080, endpoint{api1, true}, endpoint{api2, false})
	waitEDS(t, ads, cluster, []string{"10.40.0.2"}, 20*time.Second)

	// The API server restarts; the informers re-list and carry on.
	if err := api.restart(); err != nil {
		t.Fatalf("restart the API server: %v", err)
	}
	api3 := pod(t, c, ns, "api-3", "api", "10.40.0.4", map[string]string{"app": "api"})
	slice(t, c, ns, "api", 8080, endpoint{api1, true}, endpoint{api3, true})
	// The informers' watches broke for the whole restart, and client-go
	// backs off between failed re-lists (up to 30 s, jittered): allow
	// for that, and say which step was slow.
	testwait.Until(t, "the informers to re-list after the restart", 90*time.Second, func() bool {
		return cp.Store.Snapshot().Workload(ns, "api-3") != nil
	})
	waitEDS(t, ads, cluster, []string{"10.40.0.2", "10.40.0.4"}, 30*time.Second)
}

// TestPolicyStatus: an invalid policy is refused with the field in its
// status; an invalid edit keeps the last good generation in force.
func TestPolicyStatus(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	namespace(t, c, "bulwark-system", false)
	const ns = "status"
	namespace(t, c, ns, true)
	fe := pod(t, c, ns, "frontend-1", "frontend", "10.41.0.1", nil)
	api1 := pod(t, c, ns, "api-1", "api", "10.41.0.2", nil)
	service(t, c, ns, "api", 8080)
	slice(t, c, ns, "api", 8080, endpoint{api1, true})
	cp := controlPlane(t, api.admin(), "bulwark-system", "cp-status")

	condition := func(name string) map[string]any {
		u, err := dynamicClient(t).Resource(kube.AccessPolicyGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		list, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		if len(list) == 0 {
			return nil
		}
		return list[0].(map[string]any)
	}

	accessPolicy(t, ns, "api-from-frontend", allowFrom("frontend"))
	testwait.Until(t, "the policy to be accepted", 20*time.Second, func() bool {
		c := condition("api-from-frontend")
		return c != nil && c["status"] == "True"
	})

	// The API server's schema lets this through; Bulwark's validation
	// does not: "Front_End" is not a service account name.
	accessPolicy(t, ns, "api-from-frontend", allowFrom("Front_End"))
	testwait.Until(t, "the edit to be refused", 20*time.Second, func() bool {
		c := condition("api-from-frontend")
		return c != nil && c["status"] == "False"
	})
	cond := condition("api-from-frontend")
	msg, _ := cond["message"].(string)
	if cond["reason"] != kube.ReasonInvalid || !strings.Contains(msg, "spec.rules[0].from[0].serviceAccounts[0]") ||
		!strings.Contains(msg, "generation 1 stays in force") {
		t.Errorf("condition %v", cond)
	}
	// And the last good policy still lets frontend in.
	ads := adstest.Dial(t, cp.XDSAddr.String(), ns+"/"+fe.Name, svidFor(t, cp, ns, "frontend"))
	ads.Subscribe(resourcev3.ClusterType)
	if cds := ads.Recv(resourcev3.ClusterType, 20*time.Second); !slices.Contains(adstest.Names(cds), "outbound|8080|api.status") {
		t.Errorf("after an invalid edit frontend lost api: %v", adstest.Names(cds))
	}

	// A new invalid policy is refused outright.
	accessPolicy(t, ns, "broken", map[string]any{"selector": map[string]any{"service": "api"}, "action": "DENY",
		"rules": []any{map[string]any{"from": []any{map[string]any{"namespaces": []any{"No_Such"}}}}}})
	testwait.Until(t, "the new policy to be refused", 20*time.Second, func() bool {
		c := condition("broken")
		return c != nil && c["status"] == "False" && strings.Contains(c["message"].(string), "not in force")
	})
}
