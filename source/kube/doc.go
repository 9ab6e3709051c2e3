// Package kube is the Kubernetes source: it watches Services,
// EndpointSlices, Pods, Namespaces and the bulwark.dev policy CRDs with
// client-go informers and writes the model the translator reads, the same
// model the mesh file source writes; it reports each policy's acceptance
// in its status, and publishes the root certificate in a ConfigMap in
// every mesh namespace.
//
// The mapping from the informers' caches to the model (Mapper) does no
// I/O: it returns the model state and the status writes to make, which
// the Source applies after writing the model. Policy kinds come from
// package kinds, so this package refuses the same mistakes as a mesh file.
//
// Only namespaces labeled bulwark.dev/mesh=enabled are in the mesh. Nothing
// is written to the model before every informer has synced, and events
// are coalesced into one model write. It must never know about Envoy or
// decide identities (TokenReview and the CA Secret are package incluster).
package kube
