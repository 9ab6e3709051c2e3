package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/kinds"
)

// TestSourceWithFakeClients runs the whole source (informers, mapping,
// model write, status and root ConfigMap) against client-go's fake
// clientsets.
func TestSourceWithFakeClients(t *testing.T) {
	in := baseInputs()
	var objs []runtime.Object
	for _, o := range in.Namespaces {
		objs = append(objs, o)
	}
	for _, o := range in.Services {
		objs = append(objs, o)
	}
	for _, o := range in.EndpointSlices {
		objs = append(objs, o)
	}
	for _, o := range in.Pods {
		objs = append(objs, o)
	}
	client := fake.NewClientset(objs...)
	good := policy(kinds.AccessPolicy, "demo", "api-from-frontend", 1, allowFrom("frontend"))
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		kinds.AccessPolicy.GVR(): "AccessPolicyList", kinds.MTLSPolicy.GVR(): "MTLSPolicyList",
	}, good)

	store := model.NewStore()
	src, err := New(Config{Client: client, Dynamic: dyn, Store: store, RootNamespace: "bulwark-system", WriteStatus: true,
		RootCertPEM: []byte("-----BEGIN CERTIFICATE-----\n"), Debounce: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-src.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("the source did not sync")
	}

	snap := store.Snapshot()
	if len(snap.Workloads()) != 2 || len(snap.AccessPolicies()) != 1 {
		t.Fatalf("model: %d workloads, %d access policies; want 2 and 1", len(snap.Workloads()), len(snap.AccessPolicies()))
	}
	if _, err := client.CoreV1().ConfigMaps("demo").Get(ctx, RootCertConfigMap, metav1.GetOptions{}); err != nil {
		t.Errorf("root ConfigMap in demo: %v", err)
	}
	if _, err := client.CoreV1().ConfigMaps("outside").Get(ctx, RootCertConfigMap, metav1.GetOptions{}); err == nil {
		t.Error("root ConfigMap published outside the mesh")
	}
	condition := func() map[string]any {
		u, err := dyn.Resource(AccessPolicyGVR).Namespace("demo").Get(ctx, "api-from-frontend", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		list, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		if len(list) != 1 {
			return nil
		}
		return list[0].(map[string]any)
	}
	testwait.Until(t, "the Accepted status", 10*time.Second, func() bool {
		c := condition()
		return c != nil && c["reason"] == ReasonAccepted && c["status"] == "True"
	})

	// An invalid edit: the status says why, and the model keeps generation 1.
	bad := policy(kinds.AccessPolicy, "demo", "api-from-frontend", 2, allowFrom("Not A Name!"))
	cur, err := dyn.Resource(AccessPolicyGVR).Namespace("demo").Get(ctx, "api-from-frontend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad.SetResourceVersion(cur.GetResourceVersion())
	if _, err := dyn.Resource(AccessPolicyGVR).Namespace("demo").Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the Invalid status", 10*time.Second, func() bool {
		c := condition()
		return c != nil && c["reason"] == ReasonInvalid && strings.HasSuffix(c["message"].(string), "(generation 1 stays in force)")
	})
	if ps := store.Snapshot().AccessPolicies(); len(ps) != 1 || ps[0].Spec.Rules[0].From[0].ServiceAccounts[0] != "frontend" {
		t.Errorf("the model lost the last good generation: %+v", ps)
	}
}
