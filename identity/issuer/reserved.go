package issuer

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// reservedRefusals counts requests refused because the workload's
// identity is the control plane's own.
func newReservedRefusals() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bulwark_issuer_reserved_identity_refusals_total",
		Help: "Certificate requests refused because the workload's identity is the control plane's own.",
	})
}

// reserved returns the identities never issued to a workload: the
// configured ones and the contract's default for the CA's trust domain.
func (s *Server) reserved() []spiffeid.ID {
	return append(slices.Clip(s.cfg.Reserved), contract.ControlPlaneID(s.cfg.CA.TrustDomain()))
}

// checkReserved refuses to issue id to workload if id is the control
// plane's: agents and Envoys accept a server holding it as their control
// plane, so a workload with it could serve them any configuration. It
// fails closed whatever proved the workload, and says so loudly: this is
// a mesh file or a cluster that puts a workload where the control plane
// is, or someone trying.
func (s *Server) checkReserved(id spiffeid.ID, workload, method string) error {
	if !slices.Contains(s.reserved(), id) {
		return nil
	}
	s.reservedRefusals.Inc()
	s.log.Error("refused to issue the control plane's own identity to a workload", "workload", workload, "id", id.String(), "method", method)
	return status.Errorf(codes.PermissionDenied, "workload %s runs as %s, which is the control plane's own identity: it is never issued to a workload (move the workload to another service account)",
		workload, id)
}
