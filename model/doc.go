// Package model holds Bulwark's view of the mesh: plain Go types for the
// mesh, services, workloads, endpoints and policies, their validation,
// and a go-memdb store that keeps them.
//
// Sources (a mesh file, Kubernetes) write the store; translators read
// consistent snapshots of it and use its watch channels to learn what
// changed. The package owns the meaning of every field and the rules that
// make a value valid, so both sources reject the same mistakes with the
// same words.
//
// Connected proxies are not part of the model: the xDS server keeps
// them, and nothing downstream of the model writes to it.
//
// It must never import anything else from this project, client-go or
// Envoy's protos: the model describes intent, not how a source found it
// or how a proxy is configured.
package model
