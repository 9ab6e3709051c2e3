package controlplane

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

// following is a replica that does not lead.
type following struct{ DirCoordinator }

func (following) Leading() bool { return false }

// TestFollowerAddsTheSerialsItIssued: in Kubernetes only the leading
// replica drives the State, and it learns a revoked workload's serials
// from what it sees: the leaves presented to it and the certificates it
// issued. A certificate another replica issued would stay off the CRLs
// unless the workload happened to be connected. Every replica adds the
// serials it knows, leading or not.
func TestFollowerAddsTheSerialsItIssued(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	dir := t.TempDir()
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	store := trust.NewDirStore(dir, td)
	ctx := context.Background()
	st, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Revoke(st, trust.Revocation{Kind: trust.ByWorkload, Value: "demo/api-1", Reason: "stolen key"}, trust.Operation{Who: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := store.Save(ctx, st); err != nil {
		t.Fatal(err)
	}
	log := testlog.New(t)
	auth, err := newRotatingAuthority(st, ca.Config{}, 0, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	active := st.Active()
	issued := issuer.IssuedCert{Serial: "abc123", AuthorityKeyID: active.Signing().SubjectKeyId, NotAfter: time.Now().Add(time.Hour)}
	tm := &trustManager{coord: following{DirCoordinator{Dir: store}}, auth: auth,
		issuedTo: func(w string) []issuer.IssuedCert {
			if w == "demo/api-1" {
				return []issuer.IssuedCert{issued}
			}
			return nil
		},
		setEpoch: func(uint64) {}, log: log, m: newTrustMetrics(prometheus.NewRegistry()), now: time.Now,
		poll: 10 * time.Millisecond, kicks: make(chan struct{}, 1), warm: true}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- tm.run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })

	testwait.Until(t, "the serial issued by the follower stored with the revocation", 5*time.Second, func() bool {
		st, err := store.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r := st.Revocations[0]
		return slices.ContainsFunc(r.Leaves, func(l trust.LeafInfo) bool { return l.Serial == "abc123" && l.Issuer == active.ID })
	})
	// Known now: nothing more is saved.
	before, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	after, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision != before.Revision {
		t.Errorf("the follower saved again (revision %d -> %d) with nothing new to add", before.Revision, after.Revision)
	}
}
