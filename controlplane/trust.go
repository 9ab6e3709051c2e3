package controlplane

import (
	"context"

	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// TrustCoordinator is where the trust State lives and how replicas agree.
//
// In file mode it is a CA directory (trust.DirStore): one control plane,
// always leading, no other replicas. In Kubernetes mode it is the CA
// Secret, with the Lease deciding which replica leads and each replica's
// evidence published for the leader's gates.
type TrustCoordinator interface {
	Store() trust.Store
	// Leading: this replica drives rotations and automatic steps.
	Leading() bool
	// Publish shares this replica's evidence, for the others.
	Publish(ctx context.Context, acks []trust.ProxyAck) error
	// Others is the other replicas' evidence; missing names those whose
	// evidence is absent or stale.
	Others(ctx context.Context) (acks []trust.ProxyAck, missing []string, err error)
	// Changed is closed when the stored state may have changed (nil: poll).
	Changed() <-chan struct{}
}

// DirCoordinator is the file-mode TrustCoordinator: the State in a CA
// directory, one control plane that always leads, no other replicas. The
// control plane polls the directory (Changed is nil).
type DirCoordinator struct {
	Dir *trust.DirStore
}

var _ TrustCoordinator = DirCoordinator{}

// Store returns the directory store.
func (d DirCoordinator) Store() trust.Store { return d.Dir }

// Leading is always true: there is no other replica.
func (DirCoordinator) Leading() bool { return true }

// Publish has no one to publish to.
func (DirCoordinator) Publish(context.Context, []trust.ProxyAck) error { return nil }

// Others are none.
func (DirCoordinator) Others(context.Context) ([]trust.ProxyAck, []string, error) {
	return nil, nil, nil
}

// Changed is nil: poll.
func (DirCoordinator) Changed() <-chan struct{} { return nil }
