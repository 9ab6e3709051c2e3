package incluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// The ConfigMap agents start from: in every mesh namespace, the trust
// anchors (PEM) an agent verifies the control plane with before it has a
// certificate and a bundle of its own (agent --bundle, mounted from it).
// The names are the Kubernetes source's (source/kube), which publishes
// it when no Coordinator does.
const (
	RootConfigMap    = "bulwark-root-cert"
	RootConfigMapKey = "root-cert.pem"
	// MeshLabel=MeshLabelValue marks the namespaces in the mesh.
	MeshLabel      = "bulwark.dev/mesh"
	MeshLabelValue = "enabled"
)

// rootPublisher keeps RootConfigMap in every mesh namespace equal to the
// bundle's roots. Only the leader runs it, so two replicas with a
// different view for a moment never undo each other's writes.
type rootPublisher struct {
	client     kubernetes.Interface
	namespaces cache.SharedIndexInformer // mesh namespaces only
	log        *slog.Logger
	// written is what each namespace was last seen or made to hold; a
	// namespace missing from it is checked against the API server.
	// Touched only by the coordinator's loop.
	written map[string]string
}

// forget makes the next sync check every namespace afresh (a new
// leadership, the periodic check for hands that changed the ConfigMap).
func (r *rootPublisher) forget() { clear(r.written) }

// sync makes every mesh namespace hold pemRoots. It returns every
// namespace it could not write, joined.
func (r *rootPublisher) sync(ctx context.Context, pemRoots string) error {
	var names []string
	for _, o := range r.namespaces.GetStore().List() {
		if ns, ok := o.(*corev1.Namespace); ok && ns.DeletionTimestamp == nil {
			names = append(names, ns.Name)
		}
	}
	slices.Sort(names)
	var errs []error
	for _, ns := range names {
		if r.written[ns] == pemRoots {
			continue
		}
		changed, err := r.put(ctx, ns, pemRoots)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if changed {
			r.log.Info("trust anchors for starting agents updated", "namespace", ns, "configmap", RootConfigMap)
		}
		r.written[ns] = pemRoots
	}
	return errors.Join(errs...)
}

// put writes pemRoots into ns's ConfigMap unless it holds them already.
func (r *rootPublisher) put(ctx context.Context, ns, pemRoots string) (changed bool, err error) {
	cms := r.client.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, RootConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootConfigMap, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "bulwark"}},
			Data:       map[string]string{RootConfigMapKey: pemRoots},
		}, metav1.CreateOptions{})
	case err == nil && cm.Data[RootConfigMapKey] == pemRoots:
		return false, nil
	case err == nil:
		cm = cm.DeepCopy()
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[RootConfigMapKey] = pemRoots
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		return false, fmt.Errorf("kube: configmap %s/%s: %w", ns, RootConfigMap, err)
	}
	return true, nil
}
