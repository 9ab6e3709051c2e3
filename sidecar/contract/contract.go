package contract

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// The secrets a sidecar's SDS server (the agent beside its Envoy)
// provides, and the bootstrap cluster that reaches that server. The
// control plane's listeners and clusters name only these secrets.
const (
	// SecretCertificate is the workload's certificate chain and key.
	SecretCertificate = "default"
	// SecretRoots is the trust bundle.
	SecretRoots = "ROOTCA"
	// SDSCluster is the bootstrap cluster of the agent's SDS socket.
	SDSCluster = "sds-grpc"
)

// Secrets returns the names of every secret a sidecar's SDS server
// provides. The slice is new on every call; the caller owns it.
func Secrets() []string { return []string{SecretCertificate, SecretRoots} }

// How a caller of the CA service proves who it is before it has a
// certificate: gRPC metadata AuthorizationKey with the value
// "<scheme> <credential>", the scheme being one of these. A caller that
// already has a certificate presents it instead.
const (
	AuthorizationKey = "authorization"
	// JoinTokenScheme carries a one-time join token (file mode).
	JoinTokenScheme = "JoinToken"
	// ServiceAccountTokenScheme carries a projected Kubernetes
	// ServiceAccount token (audience bulwark).
	ServiceAccountTokenScheme = "ServiceAccountToken"
)

// The control plane's own identity, unless an operator names another:
// spiffe://<trust domain>/ns/bulwark-system/sa/bulwark.
const (
	ControlPlaneNamespace      = "bulwark-system"
	ControlPlaneServiceAccount = "bulwark"
)

// ControlPlaneID returns the control plane's default SPIFFE ID in trust
// domain td, the only identity a sidecar accepts from its control plane
// unless told otherwise. A zero td gives the zero ID.
func ControlPlaneID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "ns", ControlPlaneNamespace, "sa", ControlPlaneServiceAccount)
	if err != nil {
		// Only a zero trust domain gets here: the segments are constants
		// that are valid path segments.
		return spiffeid.ID{}
	}
	return id
}

// NoIdentity is the SAN a client expects of a server that has no known
// identity behind it yet. The CA never issues it, so nothing matches.
const NoIdentity = "spiffe://bulwark.invalid/no-identity"
