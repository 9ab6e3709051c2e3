// Package contract is the agreement between a sidecar and the control
// plane: the names and values both sides must spell the same way, kept
// in one place so that neither side has to import the other.
//
// It holds the SDS secret names the agent serves and the control
// plane's configuration asks for (SecretCertificate, SecretRoots), the
// bootstrap cluster that reaches the agent's SDS socket (SDSCluster),
// the authorization schemes of the CA service (JoinTokenScheme,
// ServiceAccountTokenScheme), the control plane's default SPIFFE ID,
// and the Envoy TLS contexts that point at those secrets, which both the
// bootstrap and the translated listeners and clusters use.
//
// It is a leaf: it may import Envoy's protos and go-spiffe, but never a
// package of this module, and it holds no state. Changing a value here
// changes the wire contract between released agents and control planes,
// so a value once shipped is changed only with a migration.
package contract
