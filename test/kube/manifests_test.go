package kube

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/source/kube"
)

// TestManifestsPassServerSideDryRun: every document in examples/kind is
// accepted by the API server's server-side apply, dry run. (Namespaces
// and CRDs are created for real first: what lives in them cannot be
// dry-run without them.)
func TestManifestsPassServerSideDryRun(t *testing.T) {
	needAPIServer(t)
	applyCRDs(t)
	files, err := filepath.Glob("../../examples/kind/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatal("no manifests")
	}
	c := api.client(t)
	for _, f := range files {
		for _, u := range decodeDocs(t, f) {
			if u.GetKind() == "Namespace" {
				namespace(t, c, u.GetName(), u.GetLabels()[kube.MeshLabel] == kube.MeshLabelValue)
			}
		}
	}
	for _, f := range files {
		if strings.HasSuffix(f, "kind-config.yaml") {
			continue // kind's own file, not a Kubernetes object
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			if err := apply(t, api.admin(), f, true); err != nil {
				t.Errorf("server-side dry run: %v", err)
			}
		})
	}
}

// asControlPlane is the admin config impersonating the control plane's
// service account, with exactly the RBAC of examples/kind.
func asControlPlane() *rest.Config {
	cfg := api.admin()
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:bulwark-system:bulwark",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:bulwark-system", "system:authenticated"},
	}
	return cfg
}

// TestControlPlaneRunsWithTheExampleRBAC: with the service account and
// RBAC of examples/kind and nothing more, the control plane starts, makes
// or loads its CA, syncs, writes policy status, publishes the root
// certificate, reviews tokens and serves proxies; and it cannot do what
// it does not need.
func TestControlPlaneRunsWithTheExampleRBAC(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	for _, f := range []string{"00-namespace.yaml", "02-rbac.yaml"} {
		if err := apply(t, api.admin(), "../../examples/kind/"+f, false); err != nil {
			t.Fatal(err)
		}
	}
	const ns = "rbac"
	namespace(t, c, ns, true)
	fe := pod(t, c, ns, "frontend-1", "frontend", "10.44.0.1", nil)
	api1 := pod(t, c, ns, "api-1", "api", "10.44.0.2", nil)
	service(t, c, ns, "api", 8080)
	slice(t, c, ns, "api", 8080, endpoint{api1, true})
	accessPolicy(t, ns, "api-from-frontend", allowFrom("frontend"))

	// The API server authorizes from caches of Roles and bindings: wait
	// until the ones just applied are in force for the control plane.
	asCP, err := kubernetes.NewForConfig(asControlPlane())
	if err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the example RBAC to be in force", 20*time.Second, func() bool {
		_, err1 := asCP.CoreV1().Secrets("bulwark-system").Get(ctx, "bulwark-ca", metav1.GetOptions{})
		_, err2 := asCP.CoreV1().Pods("").List(ctx, metav1.ListOptions{Limit: 1})
		return (err1 == nil || apierrors.IsNotFound(err1)) && err2 == nil
	})
	cp := controlPlane(t, asControlPlane(), "bulwark-system", "cp-rbac")

	testwait.Until(t, "the root certificate in the mesh namespace", 20*time.Second, func() bool {
		cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, kube.RootCertConfigMap, metav1.GetOptions{})
		return err == nil && strings.Contains(cm.Data[kube.RootCertKey], "BEGIN CERTIFICATE")
	})
	testwait.Until(t, "the policy status", 20*time.Second, func() bool {
		u, err := dynamicClient(t).Resource(kube.AccessPolicyGVR).Namespace(ns).Get(ctx, "api-from-frontend", metav1.GetOptions{})
		return err == nil && strings.Contains(stringify(u.Object["status"]), "Accepted")
	})
	if _, err := sign(t, cp, ns+"/"+fe.Name, tokenFor(t, c, fe, "bulwark")); err != nil {
		t.Errorf("issuing with a ServiceAccount token as the control plane: %v", err)
	}
	ads := adstest.Dial(t, cp.XDSAddr.String(), ns+"/"+fe.Name, svidFor(t, cp, ns, "frontend"))
	ads.Subscribe(resourcev3.ClusterType)
	if cds := ads.Recv(resourcev3.ClusterType, 20*time.Second); len(cds.GetResources()) == 0 {
		t.Error("no clusters for frontend")
	}

	// No broader than needed.
	limited, err := kubernetes.NewForConfig(asControlPlane())
	if err != nil {
		t.Fatal(err)
	}
	for name, attempt := range map[string]func() error{
		"list secrets anywhere": func() error {
			_, err := limited.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		},
		"read another secret of its namespace": func() error {
			_, err := limited.CoreV1().Secrets("bulwark-system").Get(ctx, "someone-elses", metav1.GetOptions{})
			return err
		},
		"delete a pod": func() error {
			return limited.CoreV1().Pods(ns).Delete(ctx, api1.Name, metav1.DeleteOptions{})
		},
		"change a service": func() error {
			s, err := c.CoreV1().Services(ns).Get(ctx, "api", metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = limited.CoreV1().Services(ns).Update(ctx, s, metav1.UpdateOptions{})
			return err
		},
		"read configmaps it did not publish": func() error {
			_, err := limited.CoreV1().ConfigMaps("kube-system").Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
			return err
		},
	} {
		if err := attempt(); !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want Forbidden", name, err)
		}
	}
}

func stringify(v any) string { return fmtSprint(v) }
