package controlplane_test

import (
	"testing"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// TestModelReservesTheContractsControlPlaneIdentity: the model refuses
// workloads with the control plane's default identity by its own copy
// of the contract's names (the model imports nothing of this module).
func TestModelReservesTheContractsControlPlaneIdentity(t *testing.T) {
	if model.ControlPlaneNamespace != contract.ControlPlaneNamespace || model.ControlPlaneServiceAccount != contract.ControlPlaneServiceAccount {
		t.Errorf("model reserves %s/%s, the contract's control plane is %s/%s", model.ControlPlaneNamespace, model.ControlPlaneServiceAccount,
			contract.ControlPlaneNamespace, contract.ControlPlaneServiceAccount)
	}
}
