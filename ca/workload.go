package ca

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Workload names the workload a leaf is issued to: one of possibly many
// workloads sharing the leaf's SPIFFE ID.
type Workload struct {
	Namespace, Name string
}

// String returns "namespace/name".
func (w Workload) String() string { return w.Namespace + "/" + w.Name }

// maxSubjectField is the upper bound RFC 5280 sets on an organizational
// unit and a common name.
const maxSubjectField = 64

// SignWorkloadSVID is SignSVID for a workload's certificate: the leaf's
// subject also names the workload (OU its namespace, CN its name), so
// that a renewal presenting the leaf can be held to that workload.
// Nothing authorizes on the subject: the identity is the URI SAN.
func (c *CA) SignWorkloadSVID(pub crypto.PublicKey, id spiffeid.ID, w Workload, ttl time.Duration) ([]*x509.Certificate, error) {
	for _, f := range []string{w.Namespace, w.Name} {
		if f == "" || len(f) > maxSubjectField {
			c.m.errors.WithLabelValues("workload").Inc()
			return nil, fmt.Errorf("ca: workload %q: namespace and name must be 1 to %d bytes", w.String(), maxSubjectField)
		}
	}
	return c.sign(pub, id, pkix.Name{Organization: []string{subjectOrg}, OrganizationalUnit: []string{w.Namespace}, CommonName: w.Name}, ttl)
}

// WorkloadOf returns the workload a leaf from SignWorkloadSVID was
// issued to, and false for a leaf that names none (one from SignSVID:
// the control plane's own, 'bulwark ca issue', or a workload's from
// before leaves named their workload).
func WorkloadOf(leaf *x509.Certificate) (Workload, bool) {
	s := leaf.Subject
	if len(s.OrganizationalUnit) != 1 || s.CommonName == "" || s.OrganizationalUnit[0] == "" {
		return Workload{}, false
	}
	return Workload{Namespace: s.OrganizationalUnit[0], Name: s.CommonName}, true
}
