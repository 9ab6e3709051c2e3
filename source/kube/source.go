package kube

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/kinds"
)

// MeshLabel marks the namespaces that are in the mesh.
const (
	MeshLabel      = "bulwark.dev/mesh"
	MeshLabelValue = "enabled"
)

// The policy CRDs, as registered in package kinds.
var (
	AccessPolicyGVR = kinds.AccessPolicy.GVR()
	MTLSPolicyGVR   = kinds.MTLSPolicy.GVR()
)

// Condition reasons in policy status.
const (
	ReasonAccepted = v1alpha1.ReasonAccepted
	ReasonInvalid  = v1alpha1.ReasonInvalid
	ReasonConflict = v1alpha1.ReasonConflict
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
	// Now is the clock for status transition times; defaults to time.Now.
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Source keeps the model in line with the cluster: informers feed a
// Mapper, which decides without I/O; the source then writes the model and
// what the mapping asked to write back.
type Source struct {
	cfg     Config
	log     *slog.Logger
	factory informers.SharedInformerFactory
	dynamic dynamicinformer.DynamicSharedInformerFactory
	synced  chan struct{}
	kick    chan struct{}
	m       *metrics
	mapper  *Mapper

	services, slices, pods, namespaces cache.SharedIndexInformer
	policies                           map[*kinds.Kind]cache.SharedIndexInformer

	// Touched only by the Run goroutine.
	reported  map[kinds.Ref]string // refusals logged, by their message
	published map[string]bool      // namespaces holding the current root ConfigMap
}

// New builds the informers; Run starts them.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil || cfg.Dynamic == nil || cfg.Store == nil {
		return nil, errors.New("kube: Client, Dynamic and Store are required")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Source{
		cfg: cfg, log: cfg.Logger.With("source", "kube"),
		factory: informers.NewSharedInformerFactory(cfg.Client, 0),
		dynamic: dynamicinformer.NewDynamicSharedInformerFactory(cfg.Dynamic, 0),
		synced:  make(chan struct{}), kick: make(chan struct{}, 1), m: newMetrics(cfg.Registerer),
		mapper:   NewMapper(MapperConfig{TrustDomain: cfg.TrustDomain, DefaultAccess: cfg.DefaultAccess, RootNamespace: cfg.RootNamespace}),
		policies: map[*kinds.Kind]cache.SharedIndexInformer{},
		reported: map[kinds.Ref]string{}, published: map[string]bool{},
	}
	s.services = s.factory.Core().V1().Services().Informer()
	s.slices = s.factory.Discovery().V1().EndpointSlices().Informer()
	s.pods = s.factory.Core().V1().Pods().Informer()
	s.namespaces = s.factory.Core().V1().Namespaces().Informer()
	all := []cache.SharedIndexInformer{s.services, s.slices, s.pods, s.namespaces}
	for _, k := range kinds.Policies {
		s.policies[k] = s.dynamic.ForResource(k.GVR()).Informer()
		all = append(all, s.policies[k])
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.poke() },
		UpdateFunc: func(any, any) { s.poke() },
		DeleteFunc: func(any) { s.poke() },
	}
	for _, inf := range all {
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
	synced := []cache.InformerSynced{s.services.HasSynced, s.slices.HasSynced, s.pods.HasSynced, s.namespaces.HasSynced}
	for _, inf := range s.policies {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
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

// rebuild maps the caches to the model, writes it, then makes the
// cluster say what was decided: policy status and the root ConfigMap.
func (s *Source) rebuild(ctx context.Context) {
	start := time.Now()
	res := s.mapper.Map(s.inputs())
	changed, err := s.cfg.Store.ReplaceState(res.State)
	if err != nil {
		s.log.Error("cannot write the model", "err", err)
		return
	}
	s.m.rebuilds.Inc()
	s.m.rebuildSeconds.Observe(time.Since(start).Seconds())
	s.report(ctx, res)
	s.publishRoot(ctx, res.MeshNamespaces)
	if len(changed) > 0 {
		st := res.State
		s.log.Debug("model updated", "changed", changed, "services", len(st.Services), "workloads", len(st.Workloads),
			"endpoints", len(st.Endpoints))
	}
}

// inputs reads the informers' caches.
func (s *Source) inputs() Inputs {
	in := Inputs{Policies: map[*kinds.Kind][]*unstructured.Unstructured{}}
	for _, o := range s.namespaces.GetStore().List() {
		in.Namespaces = append(in.Namespaces, o.(*corev1.Namespace))
	}
	for _, o := range s.services.GetStore().List() {
		in.Services = append(in.Services, o.(*corev1.Service))
	}
	for _, o := range s.slices.GetStore().List() {
		in.EndpointSlices = append(in.EndpointSlices, o.(*discoveryv1.EndpointSlice))
	}
	for _, o := range s.pods.GetStore().List() {
		in.Pods = append(in.Pods, o.(*corev1.Pod))
	}
	for k, inf := range s.policies {
		for _, o := range inf.GetStore().List() {
			in.Policies[k] = append(in.Policies[k], o.(*unstructured.Unstructured))
		}
	}
	return in
}

// report logs each policy refusal once, when it first appears or changes,
// counts refusals, and writes the status the mapping asked for.
func (s *Source) report(ctx context.Context, res Result) {
	refused := map[kinds.Ref]bool{}
	for _, v := range res.Verdicts {
		if v.Verdict.Err == nil {
			continue
		}
		s.m.invalidPolicies.Inc()
		refused[v.Ref] = true
		if msg := v.Verdict.Err.Error(); s.reported[v.Ref] != msg {
			s.reported[v.Ref] = msg
			s.log.Error("policy refused", "kind", v.Ref.Kind, "policy", v.Ref.Namespace+"/"+v.Ref.Name,
				"kept_generation", v.Verdict.Kept, "problems", bounded.Text(msg, kinds.MaxMessage))
		}
	}
	for ref := range s.reported {
		if !refused[ref] {
			delete(s.reported, ref)
		}
	}
	if !s.cfg.WriteStatus {
		return
	}
	for _, w := range res.StatusWrites {
		w.Condition.LastTransitionTime = metav1.NewTime(s.cfg.Now())
		obj := w.Object.DeepCopy()
		condMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&w.Condition)
		if err == nil {
			err = unstructured.SetNestedSlice(obj.Object, []any{condMap}, "status", "conditions")
		}
		if err == nil {
			_, err = s.cfg.Dynamic.Resource(w.Kind.GVR()).Namespace(obj.GetNamespace()).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		}
		if err != nil {
			s.log.Debug("cannot write policy status", "kind", w.Kind.Name, "policy", obj.GetNamespace()+"/"+obj.GetName(), "err", err)
		}
	}
}

// RootCertConfigMap is the ConfigMap that carries the trust anchors into
// every mesh namespace.
const (
	RootCertConfigMap = "bulwark-root-cert"
	RootCertKey       = "root-cert.pem"
)

// publishRoot makes every mesh namespace hold the root certificate.
func (s *Source) publishRoot(ctx context.Context, namespaces []string) {
	if len(s.cfg.RootCertPEM) == 0 {
		return
	}
	for _, ns := range namespaces {
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
