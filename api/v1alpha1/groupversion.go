package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and Version of every kind in this package, and APIVersion as
// documents spell the two.
const (
	Group      = "bulwark.dev"
	Version    = "v1alpha1"
	APIVersion = Group + "/" + Version
)

// GroupVersion is bulwark.dev/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// Kinds, as documents and objects name them.
const (
	KindMesh         = "Mesh"
	KindAccessPolicy = "AccessPolicy"
	KindMTLSPolicy   = "MTLSPolicy"
)

// SchemeBuilder adds the custom resource kinds to a runtime.Scheme.
var SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &AccessPolicy{}, &AccessPolicyList{}, &MTLSPolicy{}, &MTLSPolicyList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
})

// AddToScheme registers the custom resource kinds.
var AddToScheme = SchemeBuilder.AddToScheme
