package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// ConditionAccepted is the condition type the control plane reports on
// every policy: True while the object's current generation is in force,
// False (with the reason and every problem in the message) otherwise.
const ConditionAccepted = "Accepted"

// Reasons of the Accepted condition.
const (
	// ReasonAccepted: the current generation is in force.
	ReasonAccepted = "Accepted"
	// ReasonInvalid: the object itself is wrong; the last generation that
	// was right, if any, stays in force.
	ReasonInvalid = "Invalid"
	// ReasonConflict: the object is right on its own but contradicts
	// another (two mTLS policies picking one workload); it is not in
	// force until the conflict is gone.
	ReasonConflict = "Conflict"
)

// PolicyStatus is what the control plane says of a policy.
type PolicyStatus struct {
	// Conditions holds the Accepted condition.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}
