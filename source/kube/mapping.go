package kube

import (
	"encoding/json"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/kinds"
)

// Inputs is what the informers' caches hold at one moment. The mapping
// reads it and never changes it.
type Inputs struct {
	Namespaces     []*corev1.Namespace
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Pods           []*corev1.Pod
	// Policies holds the objects of each registered policy kind.
	Policies map[*kinds.Kind][]*unstructured.Unstructured
}

// Result is what a mapping produced: the model state, and what the
// source must write back to the cluster afterwards.
type Result struct {
	State *model.State
	// MeshNamespaces are the namespaces in the mesh, sorted.
	MeshNamespaces []string
	// Verdicts says, for every policy object, whether it is in force.
	Verdicts []PolicyVerdict
	// StatusWrites are the objects whose Accepted condition must change.
	StatusWrites []StatusWrite
}

// PolicyVerdict is the decision on one policy object.
type PolicyVerdict struct {
	Ref     kinds.Ref
	Verdict kinds.Verdict
}

// StatusWrite is one policy status to update: Object (as cached) gets
// Condition, whose LastTransitionTime the writer sets.
type StatusWrite struct {
	Kind      *kinds.Kind
	Object    *unstructured.Unstructured
	Condition metav1.Condition
}

// MapperConfig configures a Mapper.
type MapperConfig struct {
	// TrustDomain of the mesh; defaults to cluster.local.
	TrustDomain string
	// DefaultAccess for workloads no ALLOW policy selects; default deny.
	DefaultAccess model.DefaultAccess
	// RootNamespace holds mesh-wide settings: an MTLSPolicy there without
	// a selector or port modes is the mesh-wide mTLS mode.
	RootNamespace string
}

// Mapper turns the cluster's objects into a model state. It does no I/O;
// it remembers the last good generation of each policy between calls, so
// it is not safe for concurrent use.
type Mapper struct {
	cfg      MapperConfig
	lastGood *kinds.LastGood
}

// NewMapper returns a Mapper with no policy remembered.
func NewMapper(cfg MapperConfig) *Mapper {
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = model.DefaultTrustDomain
	}
	if cfg.DefaultAccess == "" {
		cfg.DefaultAccess = model.DefaultDeny
	}
	return &Mapper{cfg: cfg, lastGood: kinds.NewLastGood()}
}

// Map maps in to a model state. Invalid policies keep their last good
// generation (or stay out if they never had one); policies that
// contradict others stay out; both are reported in Verdicts and, where
// the object's status says otherwise, in StatusWrites.
func (m *Mapper) Map(in Inputs) Result {
	inMesh := map[string]bool{}
	for _, ns := range in.Namespaces {
		if ns.Labels[MeshLabel] == MeshLabelValue && ns.DeletionTimestamp == nil {
			inMesh[ns.Name] = true
		}
	}
	st := &model.State{Mesh: model.Mesh{Name: "kubernetes", TrustDomain: m.cfg.TrustDomain,
		Authorization: model.Authorization{Default: m.cfg.DefaultAccess}}}
	mapWorkloads(st, in, inMesh)

	res := Result{State: st, MeshNamespaces: sortedSet(inMesh)}
	type decided struct {
		kind    *kinds.Kind
		obj     *unstructured.Unstructured
		verdict kinds.Verdict
	}
	var all []*decided
	var place []kinds.Object
	byRef := map[kinds.Ref]*decided{}
	for _, k := range kinds.Policies {
		for _, u := range in.Policies[k] {
			spec := k.NewSpec()
			meta := kinds.Meta{Namespace: u.GetNamespace(), Name: u.GetName(), Generation: u.GetGeneration()}
			obj, ok, v := m.lastGood.Decide(k, meta, spec, specOf(u, spec), &st.Mesh)
			d := &decided{k, u, v}
			all = append(all, d)
			byRef[kinds.Ref{Kind: k.Name, Namespace: meta.Namespace, Name: meta.Name}] = d
			switch {
			case !ok:
			case k == kinds.MTLSPolicy && m.isMeshWide(obj):
				p := obj.Value.(*model.MTLSPolicy)
				st.Mesh.MTLS = model.MeshMTLS{Mode: p.Spec.Mode, Exception: p.Spec.Exception}
			case inMesh[meta.Namespace]:
				place = append(place, obj)
			}
		}
	}
	m.lastGood.Sweep()
	for ref, err := range kinds.Settle(st, place) {
		byRef[ref].verdict.Err, byRef[ref].verdict.Kept = err, 0
	}
	slices.SortFunc(all, func(a, b *decided) int {
		return strings.Compare(a.kind.Name+" "+a.obj.GetNamespace()+"/"+a.obj.GetName(), b.kind.Name+" "+b.obj.GetNamespace()+"/"+b.obj.GetName())
	})
	for _, d := range all {
		res.Verdicts = append(res.Verdicts, PolicyVerdict{Ref: kinds.Ref{Kind: d.kind.Name, Namespace: d.obj.GetNamespace(), Name: d.obj.GetName()}, Verdict: d.verdict})
		cond := d.verdict.Condition()
		if !sameCondition(currentCondition(d.obj), cond) {
			res.StatusWrites = append(res.StatusWrites, StatusWrite{Kind: d.kind, Object: d.obj, Condition: cond})
		}
	}
	return res
}

// isMeshWide reports whether an MTLSPolicy sets the mesh-wide mode.
func (m *Mapper) isMeshWide(o kinds.Object) bool {
	p := o.Value.(*model.MTLSPolicy)
	return p.Namespace == m.cfg.RootNamespace && p.Spec.Selector.Empty() && len(p.Spec.PortModes) == 0
}

// mapWorkloads fills in services, workloads and endpoints.
func mapWorkloads(st *model.State, in Inputs, inMesh map[string]bool) {
	// EndpointSlices: endpoints, the target port numbers of named ports,
	// and which pod backs which service.
	type svcKey struct{ ns, name string }
	targets := map[svcKey]map[string]uint32{}
	backs := map[string]map[string]bool{} // ns/pod -> services
	for _, sl := range in.EndpointSlices {
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

	for _, svc := range in.Services {
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

	for _, pod := range in.Pods {
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

// specOf decodes an object's spec into out, a pointer to the kind's API
// type. The API server has already pruned unknown fields.
func specOf(u *unstructured.Unstructured, out any) error {
	raw, ok := u.Object["spec"]
	if !ok {
		return &model.FieldError{Path: "spec", Detail: "required"}
	}
	return kinds.DecodeSpec(raw, out)
}

// currentCondition reads the object's Accepted condition, or nil.
func currentCondition(u *unstructured.Unstructured) *metav1.Condition {
	list, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range list {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != v1alpha1.ConditionAccepted {
			continue
		}
		b, err := json.Marshal(m)
		if err != nil {
			return nil
		}
		var cond metav1.Condition
		if json.Unmarshal(b, &cond) == nil {
			return &cond
		}
	}
	return nil
}

// sameCondition reports whether the object already says what c says
// (the transition time aside).
func sameCondition(cur *metav1.Condition, c metav1.Condition) bool {
	return cur != nil && cur.Status == c.Status && cur.Reason == c.Reason && cur.Message == c.Message &&
		cur.ObservedGeneration == c.ObservedGeneration
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
