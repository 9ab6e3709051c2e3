// Package incluster is what the identity side of the control plane needs
// from a Kubernetes cluster: TokenReview, to prove a workload's
// ServiceAccount before it gets a certificate (TokenReviewer satisfies
// issuer.ServiceAccountReviewer), and the trust lifecycle's state and
// coordination between replicas:
//
//   - the CA Secret, created once by the replica holding the Lease
//     (EnsureCASecret), holds the trust State (SecretStore, a trust.Store
//     with compare-and-swap on the Secret's resourceVersion) beside the CA
//     files of its active authority, for readers from before the State;
//   - the Lease, held continuously by one replica (Leader), elects the one
//     that drives rotations;
//   - each replica publishes what its proxies hold in a ConfigMap of its
//     own (Evidence), which the leader's gates read, a stale or missing
//     one named; beside it, the roster of the proxies it had connected,
//     which it waits for after a restart (or for another replica to
//     report them) before its gates pass;
//   - the leader keeps the trust anchors agents start from (the root
//     ConfigMap of every mesh namespace) equal to the bundle's roots.
//
// Coordinator ties these together for a replica.
//
// It is apart from package kube, the source, so that the source knows
// nothing of identity. It must never decide an identity itself, nor a
// step of the lifecycle: it reports what the API server says and stores
// what package trust decided.
package incluster
