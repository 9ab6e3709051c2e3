package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

// TestStateRestoredFromABackupIsRefused: a trust state whose bundle
// sequence is below the one in use (the CA directory restored from a
// backup) is not installed: agents ignore a bundle older than the one
// they hold, so its CRLs would never reach them. The last good state
// stays in use; the refusal is logged with both sequences and the file,
// counted, shown in status, and admin steps are refused on it. Once the
// operator raises the restored state's sequence past the one in use, it
// is installed.
func TestStateRestoredFromABackupIsRefused(t *testing.T) {
	dir := newCADir(t)
	log, lines := testlog.Capture()
	cp, err := controlplane.Start(context.Background(), controlplane.Config{MeshPaths: []string{exampleMesh}, XDSAddress: "127.0.0.1:0",
		CADir: dir, Logger: log, MetricsAddress: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	admin := adminClient(t, cp)
	revoke := func(serial string) (*cav1.ChangeResponse, error) {
		return admin.Revoke(ctx10(t), &cav1.RevokeRequest{Kind: "serial", Value: serial, Operator: &cav1.Operator{Reason: "test"}})
	}
	if _, err := revoke("a1"); err != nil {
		t.Fatal(err)
	}
	store := trust.NewDirStore(dir, meshTD)
	backup, err := os.ReadFile(store.Path())
	if err != nil {
		t.Fatal(err)
	}
	old := load(t, dir).Sequence
	if _, err := revoke("a2"); err != nil {
		t.Fatal(err)
	}
	resp, err := revoke("a3")
	if err != nil {
		t.Fatal(err)
	}
	inUse := resp.GetSequence()

	// The backup comes back.
	if err := os.WriteFile(store.Path(), backup, 0o600); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the refusal logged with both sequences and the file", 5*time.Second, func() bool {
		for _, l := range strings.Split(lines.String(), "\n") {
			if strings.Contains(l, "the stored trust state cannot be used") && strings.Contains(l, store.Path()) &&
				strings.Contains(l, fmt.Sprintf("stored_sequence=%d", old)) && strings.Contains(l, fmt.Sprintf("sequence_in_use=%d", inUse)) {
				return true
			}
		}
		return false
	})
	st, err := admin.Status(ctx10(t), &cav1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetSequence() != inUse {
		t.Errorf("sequence in use %d after the backup came back, want the last good %d", st.GetSequence(), inUse)
	}
	if w := strings.Join(st.GetWarnings(), "\n"); !strings.Contains(w, fmt.Sprintf("bundle sequence %d, below the %d in use", old, inUse)) {
		t.Errorf("status warnings %q do not say the stored state went back", st.GetWarnings())
	}
	if m := fetch(t, "http://"+cp.MetricsAddr.String()+"/metrics"); strings.Contains(m, "bulwark_trust_state_load_errors_total 0") ||
		!strings.Contains(m, "bulwark_trust_state_load_errors_total") {
		t.Error("the refusal is not counted in bulwark_trust_state_load_errors_total")
	}
	if _, err := revoke("a4"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("an admin step on the restored state: %v, want FailedPrecondition", err)
	}

	// The operator moves the restored state's sequence past the one in
	// use: it is installed.
	var doc map[string]any
	if err := json.Unmarshal(backup, &doc); err != nil {
		t.Fatal(err)
	}
	doc["sequence"] = inUse + 1
	raised, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(store.Path(), raised, 0o600); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the restored state in use once its sequence is raised", 5*time.Second, func() bool {
		st, err := admin.Status(ctx10(t), &cav1.StatusRequest{})
		return err == nil && st.GetSequence() == inUse+1
	})
	if _, err := revoke("a4"); err != nil {
		t.Errorf("an admin step on the restored state raised past the one in use: %v", err)
	}
}
