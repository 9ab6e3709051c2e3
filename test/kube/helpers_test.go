package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"

	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/source/kube"
)

var ctx = context.Background()

// decodeDocs reads the YAML documents of a file.
func decodeDocs(t testing.TB, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

// apply server-side-applies the documents of a file as cfg's user;
// dryRun asks the server to check everything and store nothing.
func apply(t testing.TB, cfg *rest.Config, path string, dryRun bool) error {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := metav1.ApplyOptions{FieldManager: "bulwark-test", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var errs []error
	for _, u := range decodeDocs(t, path) {
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		if _, err := ri.Apply(ctx, u.GetName(), u, opts); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// applyCRDs installs the policy CRDs and waits until they serve.
func applyCRDs(t testing.TB) {
	t.Helper()
	if err := apply(t, api.admin(), "../../examples/kind/01-crds.yaml", false); err != nil {
		t.Fatal(err)
	}
	dyn := dynamicClient(t)
	testwait.Until(t, "the CRDs to serve", 30*time.Second, func() bool {
		_, e1 := dyn.Resource(kube.AccessPolicyGVR).List(ctx, metav1.ListOptions{})
		_, e2 := dyn.Resource(kube.MTLSPolicyGVR).List(ctx, metav1.ListOptions{})
		return e1 == nil && e2 == nil
	})
}

func dynamicClient(t testing.TB) dynamic.Interface {
	t.Helper()
	d, err := dynamic.NewForConfig(api.admin())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// namespace creates a namespace, in the mesh or not.
func namespace(t testing.TB, c kubernetes.Interface, name string, inMesh bool) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if inMesh {
		ns.Labels = map[string]string{kube.MeshLabel: kube.MeshLabelValue}
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func serviceAccount(t testing.TB, c kubernetes.Interface, ns, name string) {
	t.Helper()
	_, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// pod creates a pod and gives it an address, as a kubelet would.
func pod(t testing.TB, c kubernetes.Interface, ns, name, sa, ip string, labels map[string]string) *corev1.Pod {
	t.Helper()
	serviceAccount(t, c, ns, sa)
	p, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa, AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "app", Image: "bulwark:dev"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	p, err = c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// service creates a ClusterIP service with one HTTP port and returns it.
func service(t testing.TB, c kubernetes.Interface, ns, name string, port int32) *corev1.Service {
	t.Helper()
	s, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: []corev1.ServicePort{{
			Name: "http", Port: port, TargetPort: intstr.FromInt32(port), AppProtocol: ptr.To("http"),
		}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type endpoint struct {
	pod   *corev1.Pod
	ready bool
}

// slice writes the EndpointSlice of a service (there is no
// controller-manager to do it).
func slice(t testing.TB, c kubernetes.Interface, ns, svc string, port int32, eps ...endpoint) {
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-slice", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, e := range eps {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.pod.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod.Name, UID: e.pod.UID},
		})
	}
	cur, err := c.DiscoveryV1().EndpointSlices(ns).Get(ctx, es.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = c.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{})
	case err == nil:
		es.ResourceVersion = cur.ResourceVersion
		_, err = c.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// tokenFor mints a ServiceAccount token bound to a pod.
func tokenFor(t testing.TB, c kubernetes.Interface, p *corev1.Pod, audience string) string {
	t.Helper()
	tr, err := c.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, p.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: ptr.To(int64(3600)),
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// controlPlane starts a control plane in Kubernetes mode.
func controlPlane(t testing.TB, cfg *rest.Config, namespace, holder string) *controlplane.ControlPlane {
	t.Helper()
	return controlPlaneOn(t, cfg, namespace, holder, "127.0.0.1:0")
}

func controlPlaneOn(t testing.TB, cfg *rest.Config, namespace, holder, addr string) *controlplane.ControlPlane {
	t.Helper()
	cp, err := controlplane.Start(ctx, controlplane.Config{
		Kube:       &controlplane.KubeConfig{Rest: cfg, Namespace: namespace, Holder: holder},
		XDSAddress: addr, Logger: testlog.New(t), Debounce: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	return cp
}

// svidFor issues, from the control plane's own CA, a certificate for a
// service account.
func svidFor(t testing.TB, cp *controlplane.ControlPlane, ns, sa string) *tls.Config {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/" + sa)
	chain, err := cp.CA.SignSVID(key.Public(), id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	return spiffetls.ClientConfig(svid, x509svidBundle(cp), cp.Identity)
}

func x509svidBundle(cp *controlplane.ControlPlane) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(cp.CA.TrustDomain(), cp.CA.Roots())
}

func fmtSprint(v any) string { return fmt.Sprint(v) }
