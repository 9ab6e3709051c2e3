// Package incluster is what the identity side of the control plane needs
// from a Kubernetes cluster: TokenReview, to prove a workload's
// ServiceAccount before it gets a certificate (TokenReviewer satisfies
// issuer.ServiceAccountReviewer), and the CA material kept in a Secret,
// created once by the replica holding a Lease and never replaced
// (EnsureCASecret).
//
// It is apart from package kube, the source, so that the source knows
// nothing of identity. It must never decide an identity itself: it
// reports what the API server says, and the issuer decides.
package incluster
