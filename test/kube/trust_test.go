package kube

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/status"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	typedcoordinationv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/identity/incluster"
	"github.com/bulwarkmesh/bulwark/internal/adstest"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/source/kube"
)

var clusterLocal = spiffeid.RequireTrustDomainFromString("cluster.local")

var runs atomic.Int32

// fresh names a namespace for this run of a test: -count=N runs each
// test N times against one API server.
func fresh(name string) string {
	if n := runs.Add(1); n > 1 {
		return fmt.Sprintf("%s-%d", name, n)
	}
	return name
}

// caSecret makes the CA Secret of namespace sys as a control plane does
// (EnsureCASecret) and returns a store on it.
func caSecret(t *testing.T, c kubernetes.Interface, sys string) *incluster.SecretStore {
	t.Helper()
	namespace(t, c, sys, false)
	if err := incluster.EnsureCASecret(ctx, incluster.CASecretConfig{Client: c, Namespace: sys, Holder: "setup",
		TrustDomain: clusterLocal, Dir: t.TempDir(), Logger: testlog.New(t)}); err != nil {
		t.Fatal(err)
	}
	return secretStore(t, c, sys)
}

func secretStore(t *testing.T, c kubernetes.Interface, sys string) *incluster.SecretStore {
	t.Helper()
	s, err := incluster.NewSecretStore(incluster.SecretStoreConfig{Client: c, Namespace: sys, TrustDomain: clusterLocal})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// step is a change of the state that any writer could make.
func step(st *trust.State, who string) {
	st.Sequence++
	st.Events = append(st.Events, trust.Event{At: time.Now(), Who: who, Action: "test"})
}

// TestTrustSecretStoreCAS: two writers that loaded the same revision
// race to save; exactly one wins, the other gets trust.ErrConflict, and
// the Secret holds the winner's state. Both ways a race can go are
// made to happen: the loser reads the Secret after the winner's write
// (the stored revision moved), or before it (the API server refuses the
// loser's write by resourceVersion).
func TestTrustSecretStoreCAS(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	sys := fresh("trust-cas-system")
	store := caSecret(t, c, sys)
	first, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first.Revision != 1 || first.Sequence != 1 || len(first.Authorities) != 1 || first.Authorities[0].Origin != "init" {
		t.Fatalf("the CA secret as created: revision %d, sequence %d, %d authorities", first.Revision, first.Sequence, len(first.Authorities))
	}

	t.Run("the loser reads after the winner wrote", func(t *testing.T) {
		a, _ := store.Load(ctx)
		b, _ := secretStore(t, c, sys).Load(ctx)
		step(a, "a")
		step(b, "b")
		if err := store.Save(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := secretStore(t, c, sys).Save(ctx, b); !errors.Is(err, trust.ErrConflict) {
			t.Fatalf("the second writer: got %v, want ErrConflict", err)
		}
	})

	t.Run("both read before either writes", func(t *testing.T) {
		// Each writer's Update waits until both have read the Secret, so
		// only the API server's resourceVersion check can stop one.
		var read sync.WaitGroup
		read.Add(2)
		writers := [2]*incluster.SecretStore{}
		for i := range writers {
			s, err := incluster.NewSecretStore(incluster.SecretStoreConfig{Client: gatedClient{c, &read}, Namespace: sys, TrustDomain: clusterLocal})
			if err != nil {
				t.Fatal(err)
			}
			writers[i] = s
		}
		racing(t, store, writers, nil)
	})

	t.Run("two replicas activate different authorities", func(t *testing.T) {
		// Two prepared successors; each writer activates another one, as
		// two replicas that both believed they led might. One activation
		// is stored; the other replica's is refused and it must load the
		// new state again (where its choice is no longer the next step).
		st, err := store.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		op := trust.Operation{Who: "test", Now: time.Now()}
		mint := trust.DefaultMint(ca.DefaultRootTTL, ca.DefaultIntermediateTTL, time.Now())
		var targets [2]string
		for i := range targets {
			a, err := mint("intermediate", st.Active())
			if err != nil {
				t.Fatal(err)
			}
			if err := trust.Prepare(st, a, op); err != nil {
				t.Fatal(err)
			}
			targets[i] = a.ID
		}
		if err := store.Save(ctx, st); err != nil {
			t.Fatal(err)
		}
		won := racing(t, store, [2]*incluster.SecretStore{secretStore(t, c, sys), secretStore(t, c, sys)}, func(st *trust.State, who string) {
			target := targets[0]
			if who == "writer-1" {
				target = targets[1]
			}
			if err := trust.Activate(st, target, trust.Evidence{}, trust.Operation{Who: who, Now: time.Now()}); err != nil {
				t.Error(err)
			}
		})
		got, err := store.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		active := 0
		for _, a := range got.Authorities {
			if a.Phase == trust.Active {
				active++
			}
		}
		if active != 1 || got.Active().ID != targets[won] || got.Get(targets[1-won]).Phase != trust.Prepared {
			t.Errorf("after the race: %d active, %s active, the loser's choice %s; want only the winner's %s active", active, got.Active().ID, got.Get(targets[1-won]).Phase, targets[won])
		}
	})

	t.Run("free race, repeated", func(t *testing.T) {
		for range 5 {
			racing(t, store, [2]*incluster.SecretStore{secretStore(t, c, sys), secretStore(t, c, sys)}, nil)
		}
	})
}

// racing loads one state into two writers, makes each one's change
// (step when nil), lets both save at once, and checks that exactly one
// won and the Secret holds its state. It returns the winner.
func racing(t *testing.T, store *incluster.SecretStore, writers [2]*incluster.SecretStore, change func(st *trust.State, who string)) int {
	t.Helper()
	base, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var errs [2]error
	var states [2]*trust.State
	var wg sync.WaitGroup
	for i := range writers {
		st, err := store.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if change == nil {
			change = step
		}
		change(st, []string{"writer-0", "writer-1"}[i])
		states[i] = st
	}
	for i, w := range writers {
		wg.Go(func() { errs[i] = w.Save(ctx, states[i]) })
	}
	wg.Wait()
	won := -1
	for i, err := range errs {
		switch {
		case err == nil && won >= 0:
			t.Fatalf("both writers saved revision %d", base.Revision+1)
		case err == nil:
			won = i
		case !errors.Is(err, trust.ErrConflict):
			t.Fatalf("writer %d: %v, want ErrConflict", i, err)
		}
	}
	if won < 0 {
		t.Fatalf("neither writer saved: %v", errs)
	}
	got, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Revision != base.Revision+1 || states[won].Revision != got.Revision || len(got.Events) == 0 || got.Events[len(got.Events)-1].Who != []string{"writer-0", "writer-1"}[won] {
		t.Fatalf("the secret holds revision %d (want %d), last event %v; writer %d won", got.Revision, base.Revision+1, got.Events, won)
	}
	if states[1-won].Revision != base.Revision {
		t.Errorf("the loser's revision moved to %d", states[1-won].Revision)
	}
	return won
}

// gatedClient holds every Secret Update until read is done: both writers
// have read the Secret before either writes it.
type gatedClient struct {
	kubernetes.Interface
	read *sync.WaitGroup
}

func (g gatedClient) CoreV1() typedcorev1.CoreV1Interface {
	return gatedCore{g.Interface.CoreV1(), g.read}
}

type gatedCore struct {
	typedcorev1.CoreV1Interface
	read *sync.WaitGroup
}

func (g gatedCore) Secrets(ns string) typedcorev1.SecretInterface {
	return &gatedSecrets{SecretInterface: g.CoreV1Interface.Secrets(ns), read: g.read}
}

type gatedSecrets struct {
	typedcorev1.SecretInterface
	read *sync.WaitGroup
}

func (g *gatedSecrets) Get(ctx context.Context, name string, o metav1.GetOptions) (*corev1.Secret, error) {
	s, err := g.SecretInterface.Get(ctx, name, o)
	g.read.Done()
	return s, err
}

func (g *gatedSecrets) Update(ctx context.Context, s *corev1.Secret, o metav1.UpdateOptions) (*corev1.Secret, error) {
	g.read.Wait()
	return g.SecretInterface.Update(ctx, s, o)
}

// TestTrustLegacySecretMigrates: a CA Secret from before the trust State
// (the CA files only) loads as one active authority at sequence 1, not
// yet saved; once saved, the State is there and the files stay readable
// by ca.Load as before.
func TestTrustLegacySecretMigrates(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	sys := fresh("trust-legacy-system")
	namespace(t, c, sys, false)
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: clusterLocal}); err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{}
	for _, f := range []string{ca.RootCertFile, ca.RootKeyFile, ca.CertFile, ca.KeyFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		data[f] = b
	}
	if _, err := c.CoreV1().Secrets(sys).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bulwark-ca"}, Data: data}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	old, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: clusterLocal}})
	if err != nil {
		t.Fatal(err)
	}

	store := secretStore(t, c, sys)
	st, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != 0 || st.Sequence != 1 || len(st.Authorities) != 1 {
		t.Fatalf("migrated: revision %d, sequence %d, %d authorities; want 0, 1, 1", st.Revision, st.Sequence, len(st.Authorities))
	}
	a := st.Authorities[0]
	if a.Phase != trust.Active || a.Origin != "legacy" || !a.Root.Equal(old.Roots()[0]) || a.RootKey == nil {
		t.Fatalf("migrated authority: phase %s, origin %q, same root %v, root key held %v", a.Phase, a.Origin, a.Root.Equal(old.Roots()[0]), a.RootKey != nil)
	}
	// Loading does not write.
	if sec, _ := c.CoreV1().Secrets(sys).Get(ctx, "bulwark-ca", metav1.GetOptions{}); sec.Data[incluster.StateKey] != nil {
		t.Fatal("Load wrote the state")
	}
	// A replica starting on it leaves it alone.
	if err := incluster.EnsureCASecret(ctx, incluster.CASecretConfig{Client: c, Namespace: sys, TrustDomain: clusterLocal, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}

	// A State made anew never replaces the CA a running mesh trusts.
	other, err := trust.DefaultMint(ca.DefaultRootTTL, ca.DefaultIntermediateTTL, time.Now())("root", a)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Save(ctx, trust.New(clusterLocal, other, trust.Operation{Who: "test"})); !errors.Is(err, trust.ErrConflict) || !errors.Is(err, ca.ErrExists) {
		t.Fatalf("a new State saved over the legacy CA: %v, want ErrConflict and ca.ErrExists", err)
	}

	if err := store.Save(ctx, st); err != nil {
		t.Fatal(err)
	}
	if st.Revision != 1 {
		t.Fatalf("revision after the first save: %d", st.Revision)
	}
	again, err := store.Load(ctx)
	if err != nil || again.Revision != 1 || again.Authorities[0].ID != a.ID {
		t.Fatalf("after saving: %v, %+v", err, again)
	}
	// The files beside the State are still a CA an older replica loads:
	// the same root, the same signing certificate.
	out := t.TempDir()
	if err := incluster.EnsureCASecret(ctx, incluster.CASecretConfig{Client: c, Namespace: sys, TrustDomain: clusterLocal, Dir: out}); err != nil {
		t.Fatal(err)
	}
	viewed, err := ca.Load(ca.LoadConfig{Dir: out, Config: ca.Config{TrustDomain: clusterLocal}})
	if err != nil {
		t.Fatalf("ca.Load of the files the saved Secret holds: %v", err)
	}
	if !viewed.Roots()[0].Equal(old.Roots()[0]) || len(viewed.Roots()) != 1 {
		t.Error("the saved Secret's root-cert.pem is not the legacy root")
	}
	b, _ := os.ReadFile(filepath.Join(out, ca.CertFile))
	if string(b) != string(data[ca.CertFile]) {
		t.Error("the saved Secret's ca-cert.pem is not the legacy signing certificate")
	}
}

// TestTrustLeadershipHandover: replicas campaigning for the Lease; one
// leads at a time, and when it stops (releasing the Lease) another takes
// over within seconds.
func TestTrustLeadershipHandover(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	sys := fresh("trust-lease-system")
	namespace(t, c, sys, false)
	type replica struct {
		l      *incluster.Leader
		cancel context.CancelFunc
		done   chan struct{}
	}
	var rs []*replica
	for _, h := range []string{"replica-a", "replica-b", "replica-c"} {
		l, err := incluster.NewLeader(incluster.LeaderConfig{Client: c, Namespace: sys, Holder: h, Logger: testlog.New(t),
			LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &replica{l: l, cancel: cancel, done: make(chan struct{})}
		go func() { _ = l.Run(rctx); close(r.done) }()
		rs = append(rs, r)
		t.Cleanup(func() { cancel(); <-r.done })
	}
	// Never two at once, sampled throughout.
	var both atomic.Bool
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			n := 0
			for _, r := range rs {
				if r.l.Leading() {
					n++
				}
			}
			if n > 1 {
				both.Store(true)
			}
		}
	}()
	leader := func() *replica {
		for _, r := range rs {
			if r.l.Leading() {
				return r
			}
		}
		return nil
	}
	for round := range 2 {
		testwait.Until(t, "a leader", 10*time.Second, func() bool { return leader() != nil })
		first := leader()
		lease, err := c.CoordinationV1().Leases(sys).Get(ctx, incluster.DefaultName, metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != first.l.Holder() {
			t.Fatalf("round %d: the Lease %v (err %v) does not name the leader %s", round, lease.Spec.HolderIdentity, err, first.l.Holder())
		}
		start := time.Now()
		first.cancel()
		<-first.done
		if first.l.Leading() {
			t.Fatalf("round %d: %s still leads after it stopped", round, first.l.Holder())
		}
		// The Lease was released: another replica takes it at its next
		// retry, well before the Lease would have expired.
		testwait.Until(t, "another leader", 10*time.Second, func() bool { return leader() != nil })
		t.Logf("round %d: %s stopped; %s leads %s later", round, first.l.Holder(), leader().l.Holder(), time.Since(start).Round(time.Millisecond))
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("round %d: handover took %s: the Lease was not released", round, d)
		}
	}
	close(stop)
	<-sampled
	if both.Load() {
		t.Error("two replicas led at once")
	}
}

// TestTrustEvidenceAcrossReplicas: each replica's evidence in its
// ConfigMap; a replica reads the others', with a stale one named in
// missing, and one silent for long deleted.
func TestTrustEvidenceAcrossReplicas(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	sys := fresh("trust-evidence-system")
	namespace(t, c, sys, false)
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	ev := func(holder string) *incluster.Evidence {
		e, err := incluster.NewEvidence(incluster.EvidenceConfig{Client: c, Namespace: sys, Holder: holder, Now: now, Logger: testlog.New(t)})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	a, b, d := ev("replica-a"), ev("replica-b"), ev("replica-d")
	ack := func(node string, seq uint64) trust.ProxyAck {
		return trust.ProxyAck{Node: node, AgentSeq: seq, ProxySeq: seq, Reported: true,
			Leaves: []trust.LeafInfo{{Serial: "1f", Issuer: "0123456789ab", NotAfter: now().Add(time.Hour).UTC()}}}
	}
	if err := b.Publish(ctx, []trust.ProxyAck{ack("shop/web", 3), ack("shop/api", 2)}); err != nil {
		t.Fatal(err)
	}
	// replica-d published 20s ago and then fell silent.
	clock.Add(int64(-20 * time.Second))
	if err := d.Publish(ctx, []trust.ProxyAck{ack("shop/db", 3)}); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(20 * time.Second))
	if err := a.Publish(ctx, []trust.ProxyAck{ack("shop/mine", 3)}); err != nil {
		t.Fatal(err)
	}

	acks, missing, err := a.Others(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, p := range acks {
		nodes = append(nodes, p.Replica+":"+p.Node)
	}
	slices.Sort(nodes)
	if want := []string{"replica-b:shop/api", "replica-b:shop/web"}; !slices.Equal(nodes, want) {
		t.Errorf("the others' proxies: %v, want %v (not its own, not the stale replica's)", nodes, want)
	}
	if len(acks) > 0 && (len(acks[0].Leaves) != 1 || acks[0].Leaves[0].Issuer != "0123456789ab") {
		t.Errorf("leaves lost on the way: %+v", acks[0])
	}
	if len(missing) != 1 || !strings.Contains(missing[0], "replica-d") || !strings.Contains(missing[0], "stale") {
		t.Errorf("missing: %q, want replica-d named as stale", missing)
	}

	// Ten minutes later replica-d's ConfigMap is gone; b, which keeps
	// publishing, is counted.
	clock.Add(int64(10 * time.Minute))
	if err := b.Publish(ctx, []trust.ProxyAck{ack("shop/web", 3)}); err != nil {
		t.Fatal(err)
	}
	if _, missing, err = a.Others(ctx); err != nil || len(missing) != 0 {
		t.Errorf("after replica-d was forgotten: missing %q, err %v", missing, err)
	}
	if _, err := c.CoreV1().ConfigMaps(sys).Get(ctx, incluster.EvidenceConfigMapName("replica-d"), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("replica-d's evidence: %v, want it deleted", err)
	}
	cms, err := c.CoreV1().ConfigMaps(sys).List(ctx, metav1.ListOptions{LabelSelector: incluster.EvidenceLabel + "=true"})
	if err != nil || len(cms.Items) != 2 {
		t.Errorf("evidence configmaps: %d (%v), want replica-a's and replica-b's", len(cms.Items), err)
	}
}

// TestTrustRootConfigMapFollowsTheBundle: the leader keeps the trust
// anchors agents start from (in every mesh namespace) equal to the
// bundle's roots: a prepared authority's root joins them, a removed
// one's leaves, and a namespace that joins the mesh gets them. The
// coordinator's watch on the Secret says when it changed.
func TestTrustRootConfigMapFollowsTheBundle(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	sys := fresh("trust-roots-system")
	store := caSecret(t, c, sys)
	rootsA, rootsB := fresh("roots-a"), fresh("roots-b")
	namespace(t, c, rootsA, true)
	coord, _ := coordinator(t, incluster.CoordinatorConfig{Client: c, Namespace: sys, Holder: "replica-a"})
	testwait.Until(t, "replica-a to lead", 10*time.Second, coord.Leading)

	st, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := st.Authorities[0]
	rootsAre(t, c, rootsA, old.Root)

	// A new authority under a new root, prepared.
	changed := coord.Changed()
	next, err := trust.DefaultMint(ca.DefaultRootTTL, ca.DefaultIntermediateTTL, time.Now())("root", old)
	if err != nil {
		t.Fatal(err)
	}
	op := trust.Operation{Who: "test", Now: time.Now()}
	if err := trust.Prepare(st, next, op); err != nil {
		t.Fatal(err)
	}
	if err := store.Save(ctx, st); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("Changed was not closed after the Secret changed")
	}
	rootsAre(t, c, rootsA, old.Root, next.Root)
	namespace(t, c, rootsB, true)
	rootsAre(t, c, rootsB, old.Root, next.Root)

	// The new one active, the old one removed: its root leaves.
	if err := errors.Join(trust.Activate(st, next.ID, trust.Evidence{}, op), trust.Remove(st, old.ID, trust.Evidence{}, op)); err != nil {
		t.Fatal(err)
	}
	if err := store.Save(ctx, st); err != nil {
		t.Fatal(err)
	}
	rootsAre(t, c, rootsA, next.Root)
	rootsAre(t, c, rootsB, next.Root)
	if _, err := c.CoreV1().ConfigMaps(sys).Get(ctx, kube.RootCertConfigMap, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the control plane's own namespace, not in the mesh, got the root configmap: %v", err)
	}
	if incluster.RootConfigMap != kube.RootCertConfigMap || incluster.RootConfigMapKey != kube.RootCertKey || incluster.MeshLabel != kube.MeshLabel {
		t.Error("package incluster and the Kubernetes source disagree on the root configmap's names")
	}
}

// coordinator starts a Coordinator with short timings for tests, and
// returns it with what stops it (also done at cleanup).
func coordinator(t *testing.T, cfg incluster.CoordinatorConfig) (*incluster.Coordinator, func()) {
	t.Helper()
	cfg.TrustDomain = clusterLocal
	cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod = 3*time.Second, 2*time.Second, 200*time.Millisecond
	if cfg.Logger == nil {
		cfg.Logger = testlog.New(t)
	}
	coord, err := incluster.NewCoordinator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	if err := coord.Start(cctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	stop := func() { cancel(); _ = coord.Wait() }
	t.Cleanup(stop)
	return coord, stop
}

// rootsAre waits until ns's root ConfigMap holds exactly roots.
func rootsAre(t *testing.T, c kubernetes.Interface, ns string, roots ...*x509.Certificate) {
	t.Helper()
	want := string(pemutil.EncodeCerts(roots))
	testwait.Until(t, "the root configmap of "+ns+" to hold the bundle's roots", 15*time.Second, func() bool {
		cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, kube.RootCertConfigMap, metav1.GetOptions{})
		return err == nil && cm.Data[kube.RootCertKey] == want
	})
}

// TestTrustCoordinatorRunsWithTheExampleRBAC: two replicas' coordinators
// as the control plane's service account, with the RBAC of examples/kind
// and nothing more: they watch the Secret, elect a leader, publish and
// read each other's evidence, forget one that left, and the leader
// publishes the trust anchors.
func TestTrustCoordinatorRunsWithTheExampleRBAC(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	for _, f := range []string{"00-namespace.yaml", "02-rbac.yaml"} {
		if err := apply(t, api.admin(), "../../examples/kind/"+f, false); err != nil {
			t.Fatal(err)
		}
	}
	const sys, ns = "bulwark-system", "trust-rbac"
	namespace(t, c, ns, true)
	asCP, err := kubernetes.NewForConfig(asControlPlane())
	if err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the example RBAC to be in force", 20*time.Second, func() bool {
		_, err := asCP.CoreV1().ConfigMaps(sys).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil
	})
	if err := incluster.EnsureCASecret(ctx, incluster.CASecretConfig{Client: asCP, Namespace: sys, Holder: "rbac-setup",
		TrustDomain: clusterLocal, Dir: t.TempDir(), Logger: testlog.New(t)}); err != nil {
		t.Fatal(err)
	}
	one, stopOne := coordinator(t, incluster.CoordinatorConfig{Client: asCP, Namespace: sys, Holder: "rbac-replica-1"})
	two, _ := coordinator(t, incluster.CoordinatorConfig{Client: asCP, Namespace: sys, Holder: "rbac-replica-2", StaleAfter: time.Second})

	testwait.Until(t, "one leader", 10*time.Second, func() bool { return one.Leading() != two.Leading() })
	st, err := one.Store().Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rootsAre(t, c, ns, st.Bundle().Roots...)
	changed := two.Changed()
	step(st, "rbac-replica-1")
	if err := one.Store().Save(ctx, st); err != nil {
		t.Fatalf("saving the state as the control plane: %v", err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the other replica's watch did not see the Secret change")
	}

	if err := one.Publish(ctx, []trust.ProxyAck{ackFor("trust-rbac/web", st.Sequence)}); err != nil {
		t.Fatal(err)
	}
	if err := two.Publish(ctx, []trust.ProxyAck{ackFor("trust-rbac/api", st.Sequence)}); err != nil {
		t.Fatal(err)
	}
	acks, missing, err := two.Others(ctx)
	if err != nil || len(acks) != 1 || acks[0].Node != "trust-rbac/web" || acks[0].Replica != "rbac-replica-1" || len(missing) != 0 {
		t.Fatalf("replica 2 sees %+v, missing %q, err %v", acks, missing, err)
	}
	// Replica 1 leaves: named missing at first, then forgotten (its
	// ConfigMap deleted) once the stale period has passed.
	stopOne()
	_, missing, _ = two.Others(ctx)
	if len(missing) != 1 || !strings.Contains(missing[0], "rbac-replica-1") {
		t.Errorf("just after replica 1 left: missing %q", missing)
	}
	testwait.Until(t, "replica 1's evidence to be forgotten", 10*time.Second, func() bool {
		_, err := c.CoreV1().ConfigMaps(sys).Get(ctx, incluster.EvidenceConfigMapName("rbac-replica-1"), metav1.GetOptions{})
		_, missing, _ := two.Others(ctx)
		return apierrors.IsNotFound(err) && len(missing) == 0
	})
	testwait.Until(t, "replica 2 to lead", 10*time.Second, two.Leading)
}

func ackFor(node string, seq uint64) trust.ProxyAck {
	return trust.ProxyAck{Node: node, AgentSeq: seq, ProxySeq: seq, Reported: true}
}

// TestTrustLeaderCutOffStopsBeforeAnotherStarts: a leader that can no
// longer reach the Lease (as when its node is cut off, or it hangs)
// stops leading after RenewDeadline; the other replica takes over only
// once the Lease has expired, later: never two leaders at once.
func TestTrustLeaderCutOffStopsBeforeAnotherStarts(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	sys := fresh("trust-cutoff-system")
	namespace(t, c, sys, false)
	var cut atomic.Bool
	clients := map[string]kubernetes.Interface{"replica-a": cutClient{c, &cut}, "replica-b": c}
	leaders := map[string]*incluster.Leader{}
	for _, h := range []string{"replica-a", "replica-b"} {
		l, err := incluster.NewLeader(incluster.LeaderConfig{Client: clients[h], Namespace: sys, Holder: h, Logger: testlog.New(t),
			LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		leaders[h] = l
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = l.Run(lctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		if h == "replica-a" {
			testwait.Until(t, "replica-a to lead", 10*time.Second, l.Leading)
		}
	}
	a, b := leaders["replica-a"], leaders["replica-b"]
	cut.Store(true)
	start := time.Now()
	var aStopped, bStarted time.Duration
	for aStopped == 0 || bStarted == 0 {
		if time.Since(start) > 15*time.Second {
			t.Fatalf("after 15s: replica-a leads %v, replica-b leads %v", a.Leading(), b.Leading())
		}
		if a.Leading() && b.Leading() {
			t.Fatal("both replicas lead")
		}
		if aStopped == 0 && !a.Leading() {
			aStopped = time.Since(start)
		}
		if bStarted == 0 && b.Leading() {
			bStarted = time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("cut off: replica-a stopped leading after %s, replica-b leads after %s", aStopped.Round(time.Millisecond), bStarted.Round(time.Millisecond))
	if bStarted < aStopped {
		t.Errorf("replica-b led (%s) before replica-a stopped (%s)", bStarted, aStopped)
	}
}

// cutClient fails every Lease request while cut is set.
type cutClient struct {
	kubernetes.Interface
	cut *atomic.Bool
}

func (c cutClient) CoordinationV1() typedcoordinationv1.CoordinationV1Interface {
	return cutCoordination{c.Interface.CoordinationV1(), c.cut}
}

type cutCoordination struct {
	typedcoordinationv1.CoordinationV1Interface
	cut *atomic.Bool
}

func (c cutCoordination) Leases(ns string) typedcoordinationv1.LeaseInterface {
	return cutLeases{c.CoordinationV1Interface.Leases(ns), c.cut}
}

type cutLeases struct {
	typedcoordinationv1.LeaseInterface
	cut *atomic.Bool
}

var errCut = errors.New("test: cut off from the API server")

func (c cutLeases) Get(ctx context.Context, name string, o metav1.GetOptions) (*coordinationv1.Lease, error) {
	if c.cut.Load() {
		return nil, errCut
	}
	return c.LeaseInterface.Get(ctx, name, o)
}

func (c cutLeases) Update(ctx context.Context, l *coordinationv1.Lease, o metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	if c.cut.Load() {
		return nil, errCut
	}
	return c.LeaseInterface.Update(ctx, l, o)
}

func (c cutLeases) Create(ctx context.Context, l *coordinationv1.Lease, o metav1.CreateOptions) (*coordinationv1.Lease, error) {
	if c.cut.Load() {
		return nil, errCut
	}
	return c.LeaseInterface.Create(ctx, l, o)
}

// TestTrustTwoReplicasRotateThroughOne: two control planes on one API
// server share the trust State in the CA Secret. A root rotation is
// started through the leader's admin socket; the other replica follows
// every step (its bundle carries the new root once prepared, and after
// activation the certificates it issues are the new authority's), and
// its own proxies are counted by the leader's gate: a proxy connected to
// replica 2 that has acknowledged nothing holds the activation, named,
// until it goes away.
func TestTrustTwoReplicasRotateThroughOne(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	sys, ns := fresh("trust-ha-system"), fresh("trust-ha")
	namespace(t, c, sys, false)
	namespace(t, c, ns, true)
	web := pod(t, c, ns, "web-1", "web", "10.45.0.1", nil)
	sockets := t.TempDir()
	replica := func(holder string) *controlplane.ControlPlane { return startReplica(t, ctx, sys, sockets, holder) }
	cp1 := replica("ha-1")
	admin1 := adminClient(t, cp1)
	testwait.Until(t, "replica 1 to lead", 10*time.Second, func() bool {
		st, err := admin1.Status(ctx, &cav1.StatusRequest{})
		return err == nil && st.GetLeading()
	})
	cp2 := replica("ha-2")
	admin2 := adminClient(t, cp2)
	store := secretStore(t, c, sys)
	before, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := before.Active()

	// A proxy of replica 2, whose agent has reported no bundle.
	proxy := adstest.Dial(t, cp2.XDSAddr.String(), ns+"/"+web.Name, svidFor(t, cp2, ns, "web"))
	proxy.Subscribe(resourcev3.ClusterType)
	proxy.Recv(resourcev3.ClusterType, 20*time.Second)

	if _, err := admin1.Rotate(ctx, &cav1.RotateRequest{Kind: "root", Operator: &cav1.Operator{As: "test", Reason: "two replicas"}}); err != nil {
		t.Fatal(err)
	}
	var target *trust.Authority
	testwait.Until(t, "the rotation to stop at the activation, held by replica 2's proxy", 20*time.Second, func() bool {
		st, err := admin1.Status(ctx, &cav1.StatusRequest{})
		if err != nil || st.GetRotation().GetTarget() == "" || st.GetRotation().GetStep() != trust.StepActivate {
			return false
		}
		for _, l := range st.GetRotation().GetLaggards() {
			if strings.Contains(l, ns+"/web-1") {
				return true
			}
		}
		return false
	})
	mid, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	target = mid.Get(mid.Rotation.Target)
	if target == nil || target.Phase != trust.Prepared || mid.Active().ID != old.ID {
		t.Fatalf("mid-rotation the Secret holds target %v, active %s; want the target prepared, %s active", target, mid.Active().ID, old.ID)
	}
	// Replica 2 follows: its bundle carries the new root, at the stored
	// sequence.
	testwait.Until(t, "replica 2's bundle to carry the prepared root", 10*time.Second, func() bool {
		st, err := admin2.Status(ctx, &cav1.StatusRequest{})
		return err == nil && st.GetSequence() == mid.Sequence && len(cp2.CA.Roots()) == 2 && cp2.CA.Roots()[1].Equal(target.Root)
	})
	// An operator's activation through either replica is refused too,
	// naming the proxy.
	for i, admin := range []cav1.TrustAdminClient{admin1, admin2} {
		_, err := admin.Activate(ctx, &cav1.AuthorityRequest{Id: target.ID})
		if g := gateRefusal(err); g == nil || g.GetStep() != "activate" || !strings.Contains(strings.Join(g.GetLaggards(), ","), ns+"/web-1") {
			t.Errorf("activate through replica %d: %v, want a refusal naming %s/web-1", i+1, err, ns)
		}
	}
	if st, _ := admin2.Status(ctx, &cav1.StatusRequest{}); st.GetLeading() {
		t.Error("replica 2 says it leads too")
	}

	// The proxy goes; the leader's gate sees it gone from replica 2's
	// evidence, and the rotation completes.
	proxy.Close()
	testwait.Until(t, "the rotation done", 30*time.Second, func() bool {
		st, err := store.Load(ctx)
		return err == nil && st.Rotation == nil
	})
	final, err := store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if act := final.Active(); act == nil || act.ID != target.ID || final.Get(old.ID).Phase != trust.Removed {
		t.Fatalf("after the rotation: active %v, old %s; want %s active and the old one removed", act, final.Get(old.ID).Phase, target.ID)
	}
	// Replica 2 issues under the new authority, and trusts only its root.
	testwait.Until(t, "replica 2's bundle to hold only the new root", 10*time.Second, func() bool {
		return len(cp2.CA.Roots()) == 1 && cp2.CA.Roots()[0].Equal(target.Root)
	})
	testwait.Until(t, "the pod to reach replica 2's model", 20*time.Second, func() bool {
		return cp2.Store.Snapshot().Workload(ns, web.Name) != nil
	})
	leaf, err := sign(t, cp2, ns+"/"+web.Name, tokenFor(t, c, web, "bulwark"))
	if err != nil {
		t.Fatal(err)
	}
	if got := final.IssuerOf(leaf); got != target.ID {
		t.Errorf("replica 2 issued a certificate signed by %q, want the new authority %s", got, target.ID)
	}
	// The trust anchors agents start from follow, and the Secret's CA
	// files show the new authority to readers from before the State.
	rootsAre(t, c, ns, target.Root)
	sec, err := c.CoreV1().Secrets(sys).Get(ctx, incluster.DefaultName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(sec.Data[ca.CertFile]); got != string(pemutil.EncodeCerts(target.Chain[:1])) {
		t.Error("the Secret's ca-cert.pem is not the new authority's signing certificate")
	}
}

// adminClient talks to cp's admin socket, as `bulwark ca` does.
func adminClient(t *testing.T, cp *controlplane.ControlPlane) cav1.TrustAdminClient {
	t.Helper()
	if cp.AdminAddr == "" {
		t.Fatal("the control plane serves no admin socket")
	}
	c, conn, err := controlplane.DialAdmin(cp.AdminAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c
}

// gateRefusal is the gate's refusal carried by an admin call's error.
func gateRefusal(err error) *cav1.GateRefusal {
	for _, d := range status.Convert(err).Details() {
		if g, ok := d.(*cav1.GateRefusal); ok {
			return g
		}
	}
	return nil
}

// startReplica starts a control plane replica named holder against the
// test API server, in control plane namespace sys, with its admin socket
// in sockets; it is stopped when the test ends.
func startReplica(t *testing.T, ctx context.Context, sys, sockets, holder string) *controlplane.ControlPlane {
	t.Helper()
	cp, err := controlplane.Start(ctx, controlplane.Config{
		Kube:       &controlplane.KubeConfig{Rest: api.admin(), Namespace: sys, Holder: holder},
		XDSAddress: "127.0.0.1:0", AdminSocket: filepath.Join(sockets, holder+".sock"),
		Logger: testlog.New(t).With("replica", holder), Debounce: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("%s: %v", holder, err)
	}
	t.Cleanup(func() { _ = cp.Stop() })
	return cp
}
