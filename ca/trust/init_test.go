package trust

import (
	"context"
	"errors"
	"testing"

	"github.com/bulwarkmesh/bulwark/ca"
)

// TestInitStartsTheStateAndItsAuditTrail: a CA made by Init is stored as
// the State's first authority, made by whom it says (not as a migration
// of old files), and a second Init on the same directory changes nothing.
func TestInitStartsTheStateAndItsAuditTrail(t *testing.T) {
	dir := t.TempDir()
	if err := Init(ca.InitConfig{Dir: dir, TrustDomain: td}, "uid 0 (root) (bulwark ca init)"); err != nil {
		t.Fatal(err)
	}
	st, err := NewDirStore(dir, td).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a := st.Active()
	if st.Revision == 0 || st.Sequence != 1 || len(st.Authorities) != 1 || a.Origin != "init" || a.RootKey == nil {
		t.Fatalf("stored state: revision %d, sequence %d, %d authorities, origin %q, root key held %v",
			st.Revision, st.Sequence, len(st.Authorities), a.Origin, a.RootKey != nil)
	}
	if len(st.Events) != 1 || st.Events[0].Who != "uid 0 (root) (bulwark ca init)" {
		t.Errorf("events %+v: want one, by the one who ran init", st.Events)
	}
	if _, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td}}); err != nil {
		t.Errorf("the files of the directory no longer load as a CA: %v", err)
	}
	if err := Init(ca.InitConfig{Dir: dir, TrustDomain: td}, "someone else"); !errors.Is(err, ca.ErrExists) {
		t.Errorf("a second Init: %v, want ca.ErrExists", err)
	}
	again, err := NewDirStore(dir, td).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision != st.Revision || again.Active().ID != a.ID {
		t.Errorf("a refused Init changed the state: revision %d -> %d, authority %s -> %s", st.Revision, again.Revision, a.ID, again.Active().ID)
	}
}
