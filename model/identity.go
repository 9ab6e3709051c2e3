package model

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The control plane's own identity by default is that of service account
// ControlPlaneServiceAccount in namespace ControlPlaneNamespace (the same
// as sidecar/contract's, which the model may not import; a test in
// package controlplane keeps them equal). Agents trust a server holding
// it as their control plane, so no workload may have it.
const (
	ControlPlaneNamespace      = "bulwark-system"
	ControlPlaneServiceAccount = "bulwark"
)

// IsControlPlane reports whether a workload of namespace and service
// account would have the control plane's default identity.
func IsControlPlane(namespace, serviceAccount string) bool {
	return namespace == ControlPlaneNamespace && serviceAccount == ControlPlaneServiceAccount
}

// SPIFFEID returns the identity of a service account:
// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// Identity returns the SPIFFE ID of workload w in trust domain td. The
// model's validation guarantees it is well-formed for stored workloads.
func (w *Workload) Identity(trustDomain string) spiffeid.ID {
	id, err := SPIFFEID(trustDomain, w.Namespace, w.ServiceAccount)
	if err != nil {
		panic(fmt.Sprintf("model: workload %s has no valid identity: %v", w.Key(), err))
	}
	return id
}

// ParseIdentity splits a Bulwark workload identity,
// /ns/<namespace>/sa/<serviceAccount>, into its parts. It reports false
// for any other path.
func ParseIdentity(id spiffeid.ID) (namespace, serviceAccount string, ok bool) {
	parts := strings.Split(id.Path(), "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", false
	}
	if validLabel(parts[2]) != nil || validServiceAccount(parts[4]) != nil {
		return "", "", false
	}
	return parts[2], parts[4], true
}

// ParseIdentityString is ParseIdentity for a string, accepting only
// identities of trust domain td.
func ParseIdentityString(s, td string) (namespace, serviceAccount string, ok bool) {
	id, err := spiffeid.FromString(s)
	if err != nil || id.TrustDomain().Name() != td {
		return "", "", false
	}
	return ParseIdentity(id)
}
