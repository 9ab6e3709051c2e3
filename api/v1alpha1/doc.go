// Package v1alpha1 is Bulwark's public configuration schema, group
// bulwark.dev, version v1alpha1: the Mesh document of a mesh file and the
// AccessPolicy and MTLSPolicy kinds, which are both mesh-file documents and
// Kubernetes custom resources.
//
// These types say what users may write, and nothing else: their JSON
// names and kubebuilder markers are the contract, and the CRDs in
// examples/kind are generated from them (make generate). The control
// plane never works on them directly: package kinds converts them, in one
// place, into the model's types, which own the meaning of every field and
// its validation. A field added here therefore needs a matching model
// field and a line in the conversion; the CRD follows by itself.
//
// This package must never import anything else from this project.
//
// +kubebuilder:object:generate=true
// +groupName=bulwark.dev
package v1alpha1
