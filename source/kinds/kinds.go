package kinds

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/bulwarkmesh/bulwark/api/v1alpha1"
	"github.com/bulwarkmesh/bulwark/model"
)

// Meta names one object of a kind, and which edit of it this is (the
// Kubernetes generation; 0 in a mesh file).
type Meta struct {
	Namespace  string
	Name       string
	Generation int64
}

// Ref names one object of one kind: "AccessPolicy demo/api".
type Ref struct {
	Kind      string
	Namespace string
	Name      string
}

func (r Ref) String() string { return r.Kind + " " + r.Namespace + "/" + r.Name }

// Kind is one policy kind. Its behaviour comes from its registration; the
// fields are read only. Safe for concurrent use.
type Kind struct {
	// Name is the kind as documents and objects spell it.
	Name string
	// Resource is the plural lower-case name of its custom resource.
	Resource string

	specType reflect.Type
	// convert turns a decoded spec into the model object and validates
	// it on its own; errors are model field errors under "spec".
	convert func(meta Meta, spec any, mesh *model.Mesh) (any, error)
	// check finds the objects that contradict others, keyed by their
	// Ref; nil when the kind has no such rule.
	check func(objs []Object, workloads []*model.Workload) map[Ref]error
	// add puts an accepted object into a state.
	add func(st *model.State, obj any)
}

// GVR is the kind's custom resource.
func (k *Kind) GVR() schema.GroupVersionResource {
	return v1alpha1.GroupVersion.WithResource(k.Resource)
}

// SpecType is the API type a document's spec decodes into.
func (k *Kind) SpecType() reflect.Type { return k.specType }

// NewSpec returns a pointer to an empty spec to decode into.
func (k *Kind) NewSpec() any { return reflect.New(k.specType).Interface() }

// Object is an accepted policy: converted, valid on its own, ready for
// the model.
type Object struct {
	Kind *Kind
	Meta Meta
	// Value is the model object (*model.AccessPolicy, *model.MTLSPolicy).
	Value any
}

// Ref names the object.
func (o Object) Ref() Ref { return Ref{o.Kind.Name, o.Meta.Namespace, o.Meta.Name} }

// Accept converts spec (a pointer of the kind's SpecType, or nil when
// the object has none) and validates it on its own against the mesh's
// settings. The error lists every problem as model field errors.
func (k *Kind) Accept(meta Meta, spec any, mesh *model.Mesh) (Object, error) {
	if spec == nil || reflect.ValueOf(spec).IsNil() {
		return Object{}, &model.FieldError{Path: "spec", Detail: "required"}
	}
	if reflect.TypeOf(spec) != reflect.PointerTo(k.specType) {
		return Object{}, fmt.Errorf("kinds: %s takes a %v spec, not %T", k.Name, reflect.PointerTo(k.specType), spec)
	}
	v, err := k.convert(meta, spec, mesh)
	if err != nil {
		return Object{}, err
	}
	return Object{Kind: k, Meta: meta, Value: v}, nil
}

// define registers a kind whose API spec is S and model object M.
func define[S, M any](name, resource string, convert func(Meta, *S, *model.Mesh) (M, error), add func(*model.State, M)) *Kind {
	return &Kind{
		Name: name, Resource: resource, specType: reflect.TypeFor[S](),
		convert: func(meta Meta, spec any, mesh *model.Mesh) (any, error) { return convert(meta, spec.(*S), mesh) },
		add:     func(st *model.State, obj any) { add(st, obj.(M)) },
	}
}

// Policies are the registered policy kinds, in the order sources read
// them.
var Policies = []*Kind{AccessPolicy, MTLSPolicy}

// Lookup returns the policy kind of that name, or nil.
func Lookup(name string) *Kind {
	for _, k := range Policies {
		if k.Name == name {
			return k
		}
	}
	return nil
}

// Names lists the policy kinds' names.
func Names() []string {
	var out []string
	for _, k := range Policies {
		out = append(out, k.Name)
	}
	return out
}

// Settle puts the accepted objects into st, except those that contradict
// others (each kind's check, run over st's workloads): those are left
// out and returned with the reason. A mesh file refuses to load when any
// is returned; Kubernetes reports them in the objects' status.
func Settle(st *model.State, objs []Object) map[Ref]error {
	refused := map[Ref]error{}
	for _, k := range Policies {
		if k.check == nil {
			continue
		}
		var mine []Object
		for _, o := range objs {
			if o.Kind == k {
				mine = append(mine, o)
			}
		}
		for ref, err := range k.check(mine, st.Workloads) {
			refused[ref] = err
		}
	}
	sorted := slices.Clone(objs)
	slices.SortFunc(sorted, func(a, b Object) int { return strings.Compare(a.Ref().String(), b.Ref().String()) })
	for _, o := range sorted {
		if _, bad := refused[o.Ref()]; !bad {
			o.Kind.add(st, o.Value)
		}
	}
	return refused
}

// Conflict marks an error of Settle: the object is right on its own but
// contradicts another.
type Conflict struct{ Err error }

func (c *Conflict) Error() string { return c.Err.Error() }
func (c *Conflict) Unwrap() error { return c.Err }

// AccessPolicy is the AccessPolicy kind.
var AccessPolicy = define(v1alpha1.KindAccessPolicy, "accesspolicies",
	func(meta Meta, spec *v1alpha1.AccessPolicySpec, mesh *model.Mesh) (*model.AccessPolicy, error) {
		p := &model.AccessPolicy{Namespace: meta.Namespace, Name: meta.Name, Spec: AccessPolicySpec(spec)}
		return p, p.Validate("spec", mesh.TrustDomain)
	},
	func(st *model.State, p *model.AccessPolicy) { st.Access = append(st.Access, p) })

// MTLSPolicy is the MTLSPolicy kind.
var MTLSPolicy = func() *Kind {
	k := define(v1alpha1.KindMTLSPolicy, "mtlspolicies",
		func(meta Meta, spec *v1alpha1.MTLSPolicySpec, _ *model.Mesh) (*model.MTLSPolicy, error) {
			p := &model.MTLSPolicy{Namespace: meta.Namespace, Name: meta.Name, Spec: MTLSPolicySpec(spec)}
			return p, p.Validate("spec")
		},
		func(st *model.State, p *model.MTLSPolicy) { st.MTLS = append(st.MTLS, p) })
	k.check = func(objs []Object, workloads []*model.Workload) map[Ref]error {
		var ps []*model.MTLSPolicy
		for _, o := range objs {
			ps = append(ps, o.Value.(*model.MTLSPolicy))
		}
		out := map[Ref]error{}
		for key, errs := range model.CheckMTLSOverlap(ps, workloads) {
			ns, name, _ := strings.Cut(key, "/")
			out[Ref{k.Name, ns, name}] = &Conflict{errors.Join(errs...)}
		}
		return out
	}
	return k
}()

// MaxMessage bounds a status message: it quotes what users wrote.
const MaxMessage = 4096

// Verdict is what a source decided about one object.
type Verdict struct {
	// Generation is the object's current generation.
	Generation int64
	// Err lists the current generation's problems; nil when it is in
	// force.
	Err error
	// Kept is the generation still in force despite Err, or 0 if none.
	Kept int64
}

// Condition is the Accepted condition that reports the verdict. Its
// message lists every problem, and is bounded.
func (v Verdict) Condition() metav1.Condition {
	if v.Err == nil {
		return metav1.Condition{Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonAccepted,
			Message: "in force", ObservedGeneration: v.Generation}
	}
	var lines []string
	for _, fe := range model.FieldErrors(v.Err) {
		lines = append(lines, fe.Error())
	}
	msg := strings.Join(lines, "; ")
	if len(msg) > MaxMessage {
		// Cut between characters: the API server replaces a broken one,
		// and the status read back would never equal this one again.
		cut := MaxMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut] + "..."
	}
	reason := v1alpha1.ReasonInvalid
	var c *Conflict
	if errors.As(v.Err, &c) {
		reason = v1alpha1.ReasonConflict
	}
	if v.Kept > 0 {
		msg += fmt.Sprintf(" (generation %d stays in force)", v.Kept)
	} else {
		msg += " (not in force)"
	}
	return metav1.Condition{Type: v1alpha1.ConditionAccepted, Status: metav1.ConditionFalse, Reason: reason,
		Message: msg, ObservedGeneration: v.Generation}
}
