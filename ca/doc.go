// Package ca is Bulwark's certificate authority: a root, an intermediate
// that signs, and workload leaves that follow the X.509-SVID profile
// (exactly one spiffe:// URI SAN, not a CA, digitalSignature only, server
// and client auth, never valid past the intermediate).
//
// Every certificate it issues is checked against that profile and verified
// against the trust bundle before it is returned; a certificate that fails
// is never handed out. CA material is loaded from a directory and never
// silently regenerated: a missing or corrupt CA is an error, because a new
// root is a mesh-wide outage. The same directory layout takes an
// organisation's own PKI (root, intermediate and its key, no root key),
// and New takes any crypto.Signer, so an HSM or KMS key fits too.
//
// The package decides nothing about who may have which identity: callers
// authenticate workloads and pass the identity in. It must never know
// about Kubernetes or Envoy.
package ca
