package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// othersCoord is a TrustCoordinator whose other replicas report acks.
type othersCoord struct {
	DirCoordinator
	acks []trust.ProxyAck
}

func (o othersCoord) Others(context.Context) ([]trust.ProxyAck, []string, error) {
	return o.acks, nil, nil
}

// TestActivateWithAgentOnAnotherReplica: in Kubernetes mode a sidecar's
// Envoy (ADS) and its agent (the bundle stream) are two connections to
// the control plane's Service, which may reach two replicas. The replica
// holding the ADS stream has no report of that proxy; the one holding
// the agent's stream has it, and says the proxy holds the new bundle.
// Activation must go through: the agent's report is the proxy's.
func TestActivateWithAgentOnAnotherReplica(t *testing.T) {
	now := time.Now()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	mint := trust.DefaultMint(24*time.Hour*365, 24*time.Hour*30, now)
	root, rootKey, err := trust.MintRoot(td, 24*time.Hour*365, now)
	if err != nil {
		t.Fatal(err)
	}
	inter, key, err := trust.MintIntermediate(td, root, rootKey, 24*time.Hour*30, now)
	if err != nil {
		t.Fatal(err)
	}
	first, err := trust.NewAuthority(root, rootKey, []*x509.Certificate{inter}, key, "init")
	if err != nil {
		t.Fatal(err)
	}
	st := trust.New(td, first, trust.Operation{Who: "test", Now: now})
	next, err := mint("intermediate", st.Active())
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Prepare(st, next, trust.Operation{Who: "test", Now: now}); err != nil {
		t.Fatal(err)
	}
	tm := &trustManager{
		// Replica A: the proxy's Envoy is connected here over ADS; its
		// agent watches the bundle on replica B.
		coord: othersCoord{acks: []trust.ProxyAck{{Node: "shop/web-1", Replica: "replica-b", Reported: true,
			AgentSeq: st.Sequence, ProxySeq: st.Sequence}}},
		proxies: func() []server.ProxyStatus { return []server.ProxyStatus{{Workload: "shop/web-1"}} },
		log:     testlog.New(t), now: time.Now, warm: true,
	}
	ev := tm.evidence(context.Background(), st)
	err = trust.Activate(st, next.ID, ev, trust.Operation{Who: "test", Now: now})
	var g *trust.GateError
	if errors.As(err, &g) {
		t.Fatalf("activate refused although the proxy's agent reports bundle %d through replica-b: %v", st.Sequence, err)
	}
	if err != nil {
		t.Fatal(err)
	}

	// A proxy no replica has a report of still holds the gate.
	next2, err := mint("intermediate", st.Active())
	if err != nil {
		t.Fatal(err)
	}
	if err := trust.Prepare(st, next2, trust.Operation{Who: "test", Now: now}); err != nil {
		t.Fatal(err)
	}
	tm.proxies = func() []server.ProxyStatus {
		return []server.ProxyStatus{{Workload: "shop/web-1"}, {Workload: "shop/db-1"}}
	}
	tm.coord = othersCoord{acks: []trust.ProxyAck{{Node: "shop/web-1", Replica: "replica-b", Reported: true,
		AgentSeq: st.Sequence, ProxySeq: st.Sequence}}}
	err = trust.Activate(st, next2.ID, tm.evidence(context.Background(), st), trust.Operation{Who: "test", Now: now})
	if !errors.As(err, &g) || len(g.Laggards) != 1 {
		t.Fatalf("activate with shop/db-1 unreported: %v, want a refusal naming it alone", err)
	}
}
