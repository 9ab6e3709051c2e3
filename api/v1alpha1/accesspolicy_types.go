package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Action is what a policy does with the requests its rules match.
// +kubebuilder:validation:Enum=ALLOW;DENY
type Action string

// AccessSelector picks the workloads a policy protects: those backing a
// service of the policy's namespace, or those with the given labels.
// +kubebuilder:validation:XValidation:rule="has(self.service) != has(self.matchLabels)",message="give a service or matchLabels, not both and not neither"
type AccessSelector struct {
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Service string `json:"service,omitempty"`
	// +optional
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// Source says who a rule is about.
type Source struct {
	// ServiceAccounts are "name" (in the policy's namespace) or
	// "namespace/name".
	// +optional
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	// Namespaces match any service account there; "*" is the whole mesh.
	// +optional
	Namespaces []string `json:"namespaces,omitempty"`
	// SPIFFEIDs match exactly.
	// +kubebuilder:validation:items:Pattern=`^spiffe://`
	// +optional
	SPIFFEIDs []string `json:"spiffeIDs,omitempty"`
	// Unauthenticated matches callers without a certificate (plaintext on
	// PERMISSIVE or DISABLE ports).
	// +optional
	Unauthenticated bool `json:"unauthenticated,omitempty"`
}

// Operation says what a rule is about; every field set must match.
type Operation struct {
	// Ports are target ports of the selected workloads; empty: all.
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +optional
	Ports []uint32 `json:"ports,omitempty"`
	// Methods are HTTP methods, upper case.
	// +optional
	Methods []string `json:"methods,omitempty"`
	// Paths match the normalized path: "/admin" exactly, "/v1/*" as a
	// prefix, and globs where "*" is one segment and "**" zero or more
	// ("/beta/**" matches /beta too).
	// +kubebuilder:validation:items:Pattern=`^/`
	// +optional
	Paths []string `json:"paths,omitempty"`
	// IgnoreCase makes the path match case-insensitive.
	// +optional
	IgnoreCase bool `json:"ignoreCase,omitempty"`
}

// AccessRule matches a request when any of its sources and any of its
// operations match. An empty To matches every operation.
type AccessRule struct {
	// +kubebuilder:validation:MinItems=1
	From []Source `json:"from"`
	// +optional
	To []Operation `json:"to,omitempty"`
}

// AccessPolicySpec is what an AccessPolicy says.
type AccessPolicySpec struct {
	// Selector picks the workloads the policy protects.
	Selector AccessSelector `json:"selector"`
	Action   Action         `json:"action"`
	// DryRun evaluates the policy without enforcing it: Envoy counts what
	// it would do in its shadow statistics.
	// +optional
	DryRun bool `json:"dryRun,omitempty"`
	// +kubebuilder:validation:MinItems=1
	Rules []AccessRule `json:"rules"`
}

// AccessPolicy allows or denies calls to the workloads it selects.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ap
// +kubebuilder:printcolumn:name=Action,type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name=Dry-Run,type=boolean,JSONPath=`.spec.dryRun`
// +kubebuilder:printcolumn:name=Accepted,type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name=Age,type=date,JSONPath=`.metadata.creationTimestamp`
type AccessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              AccessPolicySpec `json:"spec"`
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// AccessPolicyList is a list of AccessPolicy.
// +kubebuilder:object:root=true
type AccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AccessPolicy `json:"items"`
}
