package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/identity/incluster"
	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

// TestTrustRestartedReplicaWaitsForItsRoster: with the default warm-up
// (75s), a replica's first start waits for no one, and saves the roster
// of its proxies in its evidence ConfigMap; restarted under the same
// name, it refuses the gates until its rostered proxy is back, naming
// it, and passes them as soon as it is: connected to it again, or, the
// second time, reported by the other replica it reconnected to.
func TestTrustRestartedReplicaWaitsForItsRoster(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	sys, ns := fresh("trust-roster-system"), fresh("trust-roster")
	namespace(t, c, sys, false)
	namespace(t, c, ns, true)
	web := pod(t, c, ns, "web-1", "web", "10.46.0.1", nil)
	workload := ns + "/" + web.Name
	sockets := t.TempDir()
	replica := func(holder string) *controlplane.ControlPlane { return startReplica(t, ctx, sys, sockets, holder) }
	rosterOf := func(holder string) []string {
		cm, err := c.CoreV1().ConfigMaps(sys).Get(ctx, incluster.EvidenceConfigMapName(holder), metav1.GetOptions{})
		if err != nil {
			return nil
		}
		var d struct{ Nodes []string }
		if json.Unmarshal([]byte(cm.Data[incluster.RosterKey]), &d) != nil {
			return nil
		}
		return d.Nodes
	}

	// First start: no ConfigMap, no one to wait for. The roster is saved
	// once the warm-up is over, so long before 75s here.
	started := time.Now()
	cp1 := replica("roster-1")
	chain, key, err := signChain(t, cp1, workload, tokenFor(t, c, web, "bulwark"), 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	agent := &rosterAgent{t: t, workload: workload, chain: chain, key: key}
	agent.connect(cp1)
	agent.ack(storedSequence(t, sys))
	testwait.Until(t, "roster-1's roster to name "+workload, 20*time.Second, func() bool {
		return slices.Equal(rosterOf("roster-1"), []string{workload})
	})
	t.Logf("first start: roster saved %s after the start", time.Since(started).Round(time.Millisecond))

	// Restarted: the gate waits for the proxy on the roster, named.
	agent.close()
	if err := cp1.Stop(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	cp1 = replica("roster-1")
	admin1 := adminClient(t, cp1)
	gatePassesWhenBack(t, admin1, "root", workload, func(seq uint64) {
		agent.connect(cp1)
		agent.ack(seq)
	})
	if took := time.Since(restarted); took > controlplane.DefaultEvidenceWarmup/2 {
		t.Errorf("the gate passed %s after the restart; the proxy was back long before the warm-up's end", took)
	}
	t.Logf("restarted with its roster: the gate passed %s after the restart", time.Since(restarted).Round(time.Millisecond))

	// With another replica: roster-1 restarts, its proxy reconnects to
	// roster-2, and roster-1's gate passes once roster-2 reports it.
	cp2 := replica("roster-2")
	agent.close()
	if err := cp1.Stop(); err != nil {
		t.Fatal(err)
	}
	restarted = time.Now()
	cp1 = replica("roster-1")
	admin1 = adminClient(t, cp1)
	gatePassesWhenBack(t, admin1, "root", workload, func(seq uint64) {
		agent.connect(cp2)
		agent.ack(seq)
	})
	if took := time.Since(restarted); took > controlplane.DefaultEvidenceWarmup/2 {
		t.Errorf("the gate passed %s after the restart; the proxy was back (at roster-2) long before the warm-up's end", took)
	}
	t.Logf("restarted, its proxy at the other replica: the gate passed %s after the restart", time.Since(restarted).Round(time.Millisecond))
	// roster-1 has no proxy now: its roster says so.
	testwait.Until(t, "roster-1's roster to be empty", 10*time.Second, func() bool {
		r := rosterOf("roster-1")
		return r != nil && len(r) == 0
	})
	if got := rosterOf("roster-2"); !slices.Equal(got, []string{workload}) {
		t.Errorf("roster-2's roster %v, want [%s]", got, workload)
	}
}

// gatePassesWhenBack prepares an authority of kind through admin, checks
// that its activation is refused while the warm-up waits for workload,
// naming it, then calls back (which brings the workload's proxy back and
// acknowledges the prepared bundle) and waits for the activation to go
// through.
func gatePassesWhenBack(t *testing.T, admin cav1.TrustAdminClient, kind, workload string, back func(seq uint64)) {
	t.Helper()
	prep, err := admin.Prepare(ctx, &cav1.PrepareRequest{Kind: kind, Operator: &cav1.Operator{As: "test", Reason: "roster"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.Activate(ctx, &cav1.AuthorityRequest{Id: prep.GetAuthority()})
	if err == nil || !strings.Contains(err.Error(), "not back yet ("+workload+")") {
		t.Fatalf("activate before %s is back: %v, want a refusal naming it as not back yet", workload, err)
	}
	back(prep.GetSequence())
	testwait.Until(t, "activate to go through with "+workload+" back", 20*time.Second, func() bool {
		_, err = admin.Activate(ctx, &cav1.AuthorityRequest{Id: prep.GetAuthority()})
		return err == nil
	})
}

// storedSequence is the bundle sequence the CA Secret of sys holds now.
func storedSequence(t *testing.T, sys string) uint64 {
	t.Helper()
	st, err := secretStore(t, api.client(t), sys).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sequence
}

// rosterAgent is a workload's agent and Envoy as the trust gates see
// them: an ADS stream, and a bundle stream on which bundles are
// acknowledged as held by both.
type rosterAgent struct {
	t        *testing.T
	workload string
	chain    []*x509.Certificate
	key      *ecdsa.PrivateKey

	proxy  *adstest.Client
	stream cav1.CertificateService_WatchTrustBundleClient
	stop   func()
}

// connect opens both streams to cp, verifying it with cp's bundle now.
func (a *rosterAgent) connect(cp *controlplane.ControlPlane) {
	t := a.t
	t.Helper()
	id, err := x509svid.IDFromCert(a.chain[0])
	if err != nil {
		t.Fatal(err)
	}
	tc := spiffetls.ClientConfig(&x509svid.SVID{ID: id, Certificates: a.chain, PrivateKey: a.key}, x509svidBundle(cp), cp.Identity)
	a.proxy = adstest.Dial(t, cp.XDSAddr.String(), a.workload, tc)
	a.proxy.Subscribe(resourcev3.ClusterType)
	a.proxy.Recv(resourcev3.ClusterType, 20*time.Second)
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	a.stream, err = cav1.NewCertificateServiceClient(conn).WatchTrustBundle(sctx)
	if err != nil {
		cancel()
		conn.Close()
		t.Fatal(err)
	}
	proxy := a.proxy
	a.stop = func() { cancel(); conn.Close(); proxy.Close() }
	t.Cleanup(a.stop)
}

// ack waits for the bundle of sequence seq (or later) and acknowledges it.
func (a *rosterAgent) ack(seq uint64) {
	t := a.t
	t.Helper()
	for {
		b, err := a.stream.Recv()
		if err != nil {
			t.Fatalf("bundle stream: %v", err)
		}
		if b.GetSequence() >= seq {
			if err := a.stream.Send(&cav1.TrustBundleAck{Sequence: b.GetSequence(), ProxySequence: b.GetSequence()}); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}

// close ends both streams, as a proxy going away.
func (a *rosterAgent) close() {
	if a.stop != nil {
		a.stop()
		a.stop = nil
	}
}
