package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/bulwarkmesh/bulwark/model"
)

// MeshLabel marks the namespaces that are in the mesh.
const (
	MeshLabel      = "bulwark.dev/mesh"
	MeshLabelValue = "enabled"
)

// The policy CRDs.
var (
	AccessPolicyGVR = schema.GroupVersionResource{Group: "bulwark.dev", Version: "v1alpha1", Resource: "accesspolicies"}
	MTLSPolicyGVR   = schema.GroupVersionResource{Group: "bulwark.dev", Version: "v1alpha1", Resource: "mtlspolicies"}
)

// Config configures a Source.
type Config struct {
	Client  kubernetes.Interface // required
	Dynamic dynamic.Interface    // required (the policy CRDs)
	Store   *model.Store         // required
	// TrustDomain of the mesh; defaults to cluster.local.
	TrustDomain string
	// DefaultAccess for workloads no ALLOW policy selects; defaults to deny.
	DefaultAccess model.DefaultAccess
	// RootNamespace holds mesh-wide settings: an MTLSPolicy there without
	// a selector is the mesh-wide mTLS mode. Usually the control plane's
	// namespace.
	RootNamespace string
	// Debounce coalesces events; defaults to 100ms.
	Debounce time.Duration
	// WriteStatus, when set, reports each policy's acceptance in its
	// status. Replicas may all do it: a status already right is left alone.
	WriteStatus bool
	// RootCertPEM, when set, is published as the ConfigMap
	// bulwark-root-cert (key root-cert.pem) in every mesh namespace, for
	// agents to verify the control plane with.
	RootCertPEM []byte
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
}

// Source keeps the model in line with the cluster.
type Source struct {
	cfg     Config
	log     *slog.Logger
	factory informers.SharedInformerFactory
	dynamic dynamicinformer.DynamicSharedInformerFactory
	synced  chan struct{}
	kick    chan struct{}
	m       *metrics

	services, slices, pods, namespaces, access, mtls cache.SharedIndexInformer

	mu sync.Mutex
	// accepted keeps the last valid spec of each policy, so an invalid
	// edit keeps the last good one serving.
	acceptedAccess map[string]acceptedAccess
	acceptedMTLS   map[string]acceptedMTLS
	published      map[string]bool // namespaces holding the current root ConfigMap
}

type acceptedAccess struct {
	generation int64
	spec       model.AccessPolicySpec
}

type acceptedMTLS struct {
	generation int64
	spec       model.MTLSPolicySpec
}

// New builds the informers; Run starts them.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil || cfg.Dynamic == nil || cfg.Store == nil {
		return nil, errors.New("kube: Client, Dynamic and Store are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = model.DefaultTrustDomain
	}
	if cfg.DefaultAccess == "" {
		cfg.DefaultAccess = model.DefaultDeny
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Source{
		cfg: cfg, log: cfg.Logger.With("source", "kube"),
		factory: informers.NewSharedInformerFactory(cfg.Client, 0),
		dynamic: dynamicinformer.NewDynamicSharedInformerFactory(cfg.Dynamic, 0),
		synced:  make(chan struct{}), kick: make(chan struct{}, 1), m: newMetrics(cfg.Registerer),
		acceptedAccess: map[string]acceptedAccess{}, acceptedMTLS: map[string]acceptedMTLS{}, published: map[string]bool{},
	}
	s.services = s.factory.Core().V1().Services().Informer()
	s.slices = s.factory.Discovery().V1().EndpointSlices().Informer()
	s.pods = s.factory.Core().V1().Pods().Informer()
	s.namespaces = s.factory.Core().V1().Namespaces().Informer()
	s.access = s.dynamic.ForResource(AccessPolicyGVR).Informer()
	s.mtls = s.dynamic.ForResource(MTLSPolicyGVR).Informer()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.poke() },
		UpdateFunc: func(any, any) { s.poke() },
		DeleteFunc: func(any) { s.poke() },
	}
	for _, inf := range []cache.SharedIndexInformer{s.services, s.slices, s.pods, s.namespaces, s.access, s.mtls} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, err
		}
		if err := inf.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
			s.m.watchErrors.Inc()
			s.log.Warn("watch broken; the informer re-lists", "err", err)
		}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Synced is closed once every informer has synced and the first state is
// in the store.
func (s *Source) Synced() <-chan struct{} { return s.synced }

func (s *Source) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run starts the informers, waits for them to sync, writes the first
// state, then rewrites it after every coalesced burst of events, until
// ctx ends.
func (s *Source) Run(ctx context.Context) error {
	s.factory.Start(ctx.Done())
	s.dynamic.Start(ctx.Done())
	s.log.Info("waiting for informers to sync")
	if !cache.WaitForCacheSync(ctx.Done(), s.services.HasSynced, s.slices.HasSynced, s.pods.HasSynced,
		s.namespaces.HasSynced, s.access.HasSynced, s.mtls.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kube: informers did not sync")
	}
	s.rebuild(ctx)
	close(s.synced)
	s.log.Info("informers synced; serving the cluster's mesh")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		// Coalesce: wait for the events to stop coming.
		t := time.NewTimer(s.cfg.Debounce)
	drain:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-s.kick:
				t.Reset(s.cfg.Debounce)
			case <-t.C:
				break drain
			}
		}
		s.rebuild(ctx)
	}
}

// rebuild writes the model the caches describe now.
func (s *Source) rebuild(ctx context.Context) {
	start := time.Now()
	st := s.state(ctx)
	changed, err := s.cfg.Store.ReplaceState(st)
	if err != nil {
		s.log.Error("cannot write the model", "err", err)
		return
	}
	s.m.rebuilds.Inc()
	s.m.rebuildSeconds.Observe(time.Since(start).Seconds())
	s.publishRoot(ctx)
	if len(changed) > 0 {
		s.log.Debug("model updated", "changed", changed, "services", len(st.Services), "workloads", len(st.Workloads),
			"endpoints", len(st.Endpoints))
	}
}

func (s *Source) meshNamespaces() map[string]bool {
	out := map[string]bool{}
	for _, o := range s.namespaces.GetStore().List() {
		ns := o.(*corev1.Namespace)
		if ns.Labels[MeshLabel] == MeshLabelValue && ns.DeletionTimestamp == nil {
			out[ns.Name] = true
		}
	}
	return out
}

// state maps the caches to a model state.
func (s *Source) state(ctx context.Context) *model.State {
	inMesh := s.meshNamespaces()
	st := &model.State{Mesh: model.Mesh{Name: "kubernetes", TrustDomain: s.cfg.TrustDomain,
		Authorization: model.Authorization{Default: s.cfg.DefaultAccess}}}

	// EndpointSlices: endpoints, the target port numbers of named ports,
	// and which pod backs which service.
	type svcKey struct{ ns, name string }
	targets := map[svcKey]map[string]uint32{}
	backs := map[string]map[string]bool{} // ns/pod -> services
	for _, o := range s.slices.GetStore().List() {
		sl := o.(*discoveryv1.EndpointSlice)
		svc := sl.Labels[discoveryv1.LabelServiceName]
		if svc == "" || !inMesh[sl.Namespace] || sl.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		k := svcKey{sl.Namespace, svc}
		if targets[k] == nil {
			targets[k] = map[string]uint32{}
		}
		var ports []model.EndpointPort
		for _, p := range sl.Ports {
			if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			targets[k][name] = uint32(*p.Port)
			ports = append(ports, model.EndpointPort{Name: name, Port: uint32(*p.Port)})
		}
		for _, ep := range sl.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			workload := ""
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				workload = ep.TargetRef.Name
				key := sl.Namespace + "/" + workload
				if backs[key] == nil {
					backs[key] = map[string]bool{}
				}
				backs[key][svc] = true
			}
			for _, addr := range ep.Addresses {
				st.Endpoints = append(st.Endpoints, &model.Endpoint{Namespace: sl.Namespace, Service: svc, Address: addr,
					Ports: ports, Ready: ready, Workload: workload})
			}
		}
	}
	st.Endpoints = dedupeEndpoints(st.Endpoints)

	for _, o := range s.services.GetStore().List() {
		svc := o.(*corev1.Service)
		if !inMesh[svc.Namespace] {
			continue
		}
		ms := &model.Service{Namespace: svc.Namespace, Name: svc.Name}
		if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
			ms.Address = ip
		}
		for _, p := range svc.Spec.Ports {
			if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
				continue
			}
			target, ok := targetPort(p, targets[svcKey{svc.Namespace, svc.Name}])
			if !ok {
				continue // a named target port no endpoint resolves yet
			}
			ms.Ports = append(ms.Ports, model.ServicePort{Name: p.Name, Port: uint32(p.Port), TargetPort: target, Protocol: protocolOf(p)})
		}
		if len(ms.Ports) > 0 {
			st.Services = append(st.Services, ms)
		}
	}

	for _, o := range s.pods.GetStore().List() {
		pod := o.(*corev1.Pod)
		if !inMesh[pod.Namespace] || pod.Status.PodIP == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = model.DefaultServiceAccount
		}
		w := &model.Workload{Namespace: pod.Namespace, Name: pod.Name, ServiceAccount: sa, Labels: pod.Labels,
			Address: pod.Status.PodIP, LocalAddress: model.DefaultLocalAddress, Capture: model.CaptureTransparent}
		for svc := range backs[pod.Namespace+"/"+pod.Name] {
			w.Services = append(w.Services, svc)
		}
		sort.Strings(w.Services)
		st.Workloads = append(st.Workloads, w)
	}

	st.Access, st.MTLS = s.policies(ctx, inMesh, &st.Mesh)
	return st
}

func dedupeEndpoints(in []*model.Endpoint) []*model.Endpoint {
	seen := map[string]bool{}
	var out []*model.Endpoint
	for _, e := range in {
		if !seen[e.Key()] {
			seen[e.Key()] = true
			out = append(out, e)
		}
	}
	return out
}

// targetPort resolves a service port's target port: a number, or a name
// the EndpointSlices resolve.
func targetPort(p corev1.ServicePort, resolved map[string]uint32) (uint32, bool) {
	switch {
	case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0:
		return uint32(p.TargetPort.IntVal), true
	case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "":
		n, ok := resolved[p.Name]
		return n, ok
	}
	return uint32(p.Port), true
}

// protocolOf reads a service port's application protocol: appProtocol,
// else the port name's prefix (http, http-*, grpc*), else TCP.
func protocolOf(p corev1.ServicePort) model.Protocol {
	if p.AppProtocol != nil {
		switch strings.ToLower(*p.AppProtocol) {
		case "http", "http2", "grpc", "kubernetes.io/h2c":
			return model.ProtocolHTTP
		default:
			return model.ProtocolTCP
		}
	}
	name := strings.ToLower(p.Name)
	if name == "http" || strings.HasPrefix(name, "http-") || strings.HasPrefix(name, "grpc") {
		return model.ProtocolHTTP
	}
	return model.ProtocolTCP
}

// policies validates the policy objects; an invalid one keeps its last
// valid spec (or is left out if it never had one), and its status says
// why.
func (s *Source) policies(ctx context.Context, inMesh map[string]bool, mesh *model.Mesh) ([]*model.AccessPolicy, []*model.MTLSPolicy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var access []*model.AccessPolicy
	seenA := map[string]bool{}
	for _, o := range s.access.GetStore().List() {
		u := o.(*unstructured.Unstructured)
		key := u.GetNamespace() + "/" + u.GetName()
		seenA[key] = true
		p := &model.AccessPolicy{Namespace: u.GetNamespace(), Name: u.GetName()}
		err := specOf(u, &p.Spec)
		if err == nil {
			err = p.Validate("spec", s.cfg.TrustDomain)
		}
		prev, had := s.acceptedAccess[key]
		switch {
		case err == nil:
			s.acceptedAccess[key] = acceptedAccess{u.GetGeneration(), p.Spec}
			s.setStatus(ctx, AccessPolicyGVR, u, nil, 0)
		case had:
			p.Spec = prev.spec
			s.setStatus(ctx, AccessPolicyGVR, u, err, prev.generation)
		default:
			s.setStatus(ctx, AccessPolicyGVR, u, err, 0)
			continue
		}
		if inMesh[p.Namespace] {
			access = append(access, p)
		}
	}
	for k := range s.acceptedAccess {
		if !seenA[k] {
			delete(s.acceptedAccess, k)
		}
	}
	var mtls []*model.MTLSPolicy
	seenM := map[string]bool{}
	for _, o := range s.mtls.GetStore().List() {
		u := o.(*unstructured.Unstructured)
		key := u.GetNamespace() + "/" + u.GetName()
		seenM[key] = true
		p := &model.MTLSPolicy{Namespace: u.GetNamespace(), Name: u.GetName()}
		err := specOf(u, &p.Spec)
		if err == nil {
			err = p.Validate("spec")
		}
		prev, had := s.acceptedMTLS[key]
		switch {
		case err == nil:
			s.acceptedMTLS[key] = acceptedMTLS{u.GetGeneration(), p.Spec}
			s.setStatus(ctx, MTLSPolicyGVR, u, nil, 0)
		case had:
			p.Spec = prev.spec
			s.setStatus(ctx, MTLSPolicyGVR, u, err, prev.generation)
		default:
			s.setStatus(ctx, MTLSPolicyGVR, u, err, 0)
			continue
		}
		switch {
		case p.Namespace == s.cfg.RootNamespace && p.Spec.Selector.Empty() && len(p.Spec.PortModes) == 0:
			mesh.MTLS = model.MeshMTLS{Mode: p.Spec.Mode, Exception: p.Spec.Exception}
		case inMesh[p.Namespace]:
			mtls = append(mtls, p)
		}
	}
	for k := range s.acceptedMTLS {
		if !seenM[k] {
			delete(s.acceptedMTLS, k)
		}
	}
	return access, mtls
}

// specOf decodes an object's spec into out.
func specOf(u *unstructured.Unstructured, out any) error {
	raw, ok := u.Object["spec"]
	if !ok {
		return &model.FieldError{Path: "spec", Detail: "required"}
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return &model.FieldError{Path: "spec", Detail: err.Error()}
	}
	return nil
}

// Condition reasons in policy status.
const (
	ReasonAccepted = "Accepted"
	ReasonInvalid  = "Invalid"
)

// setStatus reports acceptance in the object's status, unless it already
// says the same.
func (s *Source) setStatus(ctx context.Context, gvr schema.GroupVersionResource, u *unstructured.Unstructured, verr error, keptGeneration int64) {
	if verr != nil {
		s.m.invalidPolicies.Inc()
		s.log.Error("policy refused", "kind", u.GetKind(), "policy", u.GetNamespace()+"/"+u.GetName(), "problems", verr.Error())
	}
	if !s.cfg.WriteStatus {
		return
	}
	cond := metav1.Condition{Type: "Accepted", Status: metav1.ConditionTrue, Reason: ReasonAccepted,
		Message: "in force", ObservedGeneration: u.GetGeneration()}
	if verr != nil {
		var lines []string
		for _, fe := range model.FieldErrors(verr) {
			lines = append(lines, fe.Error())
		}
		msg := strings.Join(lines, "; ")
		if keptGeneration > 0 {
			msg += fmt.Sprintf(" (generation %d stays in force)", keptGeneration)
		} else {
			msg += " (not in force)"
		}
		cond = metav1.Condition{Type: "Accepted", Status: metav1.ConditionFalse, Reason: ReasonInvalid,
			Message: msg, ObservedGeneration: u.GetGeneration()}
	}
	if current := currentCondition(u); current != nil && current.Status == cond.Status && current.Reason == cond.Reason &&
		current.Message == cond.Message && current.ObservedGeneration == cond.ObservedGeneration {
		return
	}
	cond.LastTransitionTime = metav1.Now()
	obj := u.DeepCopy()
	condMap, err := toMap(cond)
	if err != nil {
		return
	}
	if err := unstructured.SetNestedSlice(obj.Object, []any{condMap}, "status", "conditions"); err != nil {
		return
	}
	_, err = s.cfg.Dynamic.Resource(gvr).Namespace(u.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	if err != nil {
		s.log.Debug("cannot write policy status", "policy", u.GetNamespace()+"/"+u.GetName(), "err", err)
	}
}

func currentCondition(u *unstructured.Unstructured) *metav1.Condition {
	list, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range list {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != "Accepted" {
			continue
		}
		b, _ := json.Marshal(m)
		var cond metav1.Condition
		if json.Unmarshal(b, &cond) == nil {
			return &cond
		}
	}
	return nil
}

func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}

// RootCertConfigMap is the ConfigMap that carries the trust anchors into
// every mesh namespace.
const (
	RootCertConfigMap = "bulwark-root-cert"
	RootCertKey       = "root-cert.pem"
)

// publishRoot makes every mesh namespace hold the root certificate.
func (s *Source) publishRoot(ctx context.Context) {
	if len(s.cfg.RootCertPEM) == 0 {
		return
	}
	for ns := range s.meshNamespaces() {
		if s.published[ns] {
			continue
		}
		cms := s.cfg.Client.CoreV1().ConfigMaps(ns)
		cm, err := cms.Get(ctx, RootCertConfigMap, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = cms.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "bulwark"}},
				Data:       map[string]string{RootCertKey: string(s.cfg.RootCertPEM)},
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				err = nil // another replica was first; checked again next time
				continue
			}
		case err == nil && cm.Data[RootCertKey] != string(s.cfg.RootCertPEM):
			cm = cm.DeepCopy()
			if cm.Data == nil {
				cm.Data = map[string]string{}
			}
			cm.Data[RootCertKey] = string(s.cfg.RootCertPEM)
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		}
		if err != nil {
			s.log.Warn("cannot publish the root certificate", "namespace", ns, "err", err)
			continue
		}
		s.published[ns] = true
	}
}
