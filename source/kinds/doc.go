// Package kinds registers the policy kinds of bulwark.dev/v1alpha1 once,
// for both sources. A Kind bundles what a source needs to read one: the
// API type to decode a spec into, the conversion to the model type and
// its validation, where the accepted object goes in a model state, the
// checks that span objects (two mTLS policies picking one workload), the
// Kubernetes resource to watch, and the status condition that reports the
// verdict. The mesh file source (package meshfile) and the Kubernetes
// source (package kube) both iterate over Policies, so a new kind is a
// type in api/v1alpha1, a model type, and one registration here; and the
// two sources refuse the same mistakes with the same words.
//
// The package also converts a Mesh document's spec; convert.go is the one
// place where API types become model types.
//
// It does no I/O and must never import client-go, Envoy's protos, or the
// sources and translators of this project.
package kinds
