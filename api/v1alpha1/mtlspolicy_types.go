package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// MTLSMode is what a sidecar accepts on an inbound port.
// +kubebuilder:validation:Enum=STRICT;PERMISSIVE;DISABLE
type MTLSMode string

// Exception justifies a mode weaker than STRICT.
type Exception struct {
	// Reason says why this traffic may skip mutual TLS.
	// +kubebuilder:validation:MinLength=1
	Reason string `json:"reason"`
	// Owner is who to ask.
	// +optional
	Owner string `json:"owner,omitempty"`
	// Expires is the last day (YYYY-MM-DD, UTC) the exception holds; after
	// it the port is STRICT again.
	// +kubebuilder:validation:Pattern=`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`
	// +optional
	Expires string `json:"expires,omitempty"`
}

// Selector picks workloads of the policy's namespace by their labels; an
// empty selector picks the whole namespace.
type Selector struct {
	// +optional
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// MTLSPolicySpec sets the mTLS mode of a namespace, or of the workloads
// its selector picks, on all or some of their ports.
type MTLSPolicySpec struct {
	// Selector picks workloads; leave it out for the whole namespace.
	// +optional
	Selector *Selector `json:"selector,omitempty"`
	// Mode applies to every port not listed in PortModes; empty leaves
	// them to the next policy out (namespace, then mesh).
	// +optional
	Mode MTLSMode `json:"mode,omitempty"`
	// PortModes sets the mode of single target ports: {"9090": PERMISSIVE}.
	// +optional
	PortModes map[string]MTLSMode `json:"portModes,omitempty"`
	// Exception must justify any mode weaker than STRICT.
	// +optional
	Exception *Exception `json:"exception,omitempty"`
}

// MTLSPolicy sets the mTLS mode of a namespace or of some of its
// workloads.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name=Mode,type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name=Accepted,type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name=Age,type=date,JSONPath=`.metadata.creationTimestamp`
type MTLSPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              MTLSPolicySpec `json:"spec"`
	// +optional
	Status PolicyStatus `json:"status,omitempty"`
}

// MTLSPolicyList is a list of MTLSPolicy.
// +kubebuilder:object:root=true
type MTLSPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MTLSPolicy `json:"items"`
}
