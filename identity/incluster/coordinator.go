package incluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// CoordinatorConfig configures a Coordinator.
type CoordinatorConfig struct {
	Client    kubernetes.Interface // required
	Namespace string               // required: the control plane's namespace
	// SecretName and LeaseName default to DefaultName.
	SecretName, LeaseName string
	// Holder names this replica in the Lease and in its evidence
	// ConfigMap (its pod name); defaults to hostname-pid.
	Holder string
	// TrustDomain of a Secret holding only CA files. Required.
	TrustDomain spiffeid.TrustDomain
	// PublishPeriod, StaleAfter, ForgetAfter and MaxProxies are the
	// evidence's (EvidenceConfig).
	PublishPeriod, StaleAfter, ForgetAfter time.Duration
	MaxProxies                             int
	// LeaseDuration, RenewDeadline and RetryPeriod are the Lease's
	// (LeaderConfig).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// RootsEvery is how often the leader checks the trust anchors of
	// every mesh namespace against the API server, beside every change;
	// defaults to a minute.
	RootsEvery time.Duration
	// Now is the clock; defaults to time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Coordinator is the trust lifecycle's Kubernetes side for one replica:
// the State in the CA Secret (Store), the Lease that elects the replica
// driving rotations (Leading), each replica's evidence of its proxies in
// a ConfigMap (Publish, Others) beside the roster of the proxies it had
// connected, for its restart (Roster, SaveRoster), a watch on the Secret
// (Changed), and, while leading, the trust anchors of every mesh
// namespace kept equal to the bundle's roots. Its methods are safe for
// concurrent use.
type Coordinator struct {
	cfg      CoordinatorConfig
	log      *slog.Logger
	store    *SecretStore
	leader   *Leader
	evidence *Evidence

	secrets   informers.SharedInformerFactory
	meshNS    informers.SharedInformerFactory
	secretInf cache.SharedIndexInformer
	roots     *rootPublisher
	kick      chan struct{}

	mu      sync.Mutex
	changed chan struct{}

	// roster is this replica's roster as read by Start, before announce.
	roster *rosterRead

	// decoded is the last Secret decoded for its roots; touched only by
	// loop.
	decoded struct{ version, pem string }

	done chan struct{}
	err  error
}

// NewCoordinator checks cfg and builds the parts; Start runs them.
func NewCoordinator(cfg CoordinatorConfig) (*Coordinator, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.TrustDomain.IsZero() {
		return nil, errors.New("kube: coordinator: Client, Namespace and TrustDomain are required")
	}
	if cfg.SecretName == "" {
		cfg.SecretName = DefaultName
	}
	if cfg.LeaseName == "" {
		cfg.LeaseName = DefaultName
	}
	if cfg.Holder == "" {
		h, _ := os.Hostname()
		cfg.Holder = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if cfg.RootsEvery <= 0 {
		cfg.RootsEvery = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Coordinator{cfg: cfg, log: cfg.Logger.With("component", "trust-coordinator", "holder", cfg.Holder),
		kick: make(chan struct{}, 1), changed: make(chan struct{}), done: make(chan struct{})}
	var err error
	if c.store, err = NewSecretStore(SecretStoreConfig{Client: cfg.Client, Namespace: cfg.Namespace, Name: cfg.SecretName,
		TrustDomain: cfg.TrustDomain, Now: cfg.Now}); err != nil {
		return nil, err
	}
	if c.leader, err = NewLeader(LeaderConfig{Client: cfg.Client, Namespace: cfg.Namespace, Name: cfg.LeaseName, Holder: cfg.Holder,
		LeaseDuration: cfg.LeaseDuration, RenewDeadline: cfg.RenewDeadline, RetryPeriod: cfg.RetryPeriod, Logger: cfg.Logger}); err != nil {
		return nil, err
	}
	if c.evidence, err = NewEvidence(EvidenceConfig{Client: cfg.Client, Namespace: cfg.Namespace, Holder: cfg.Holder,
		Period: cfg.PublishPeriod, StaleAfter: cfg.StaleAfter, ForgetAfter: cfg.ForgetAfter, MaxProxies: cfg.MaxProxies,
		Now: cfg.Now, Logger: cfg.Logger}); err != nil {
		return nil, err
	}

	// One Secret, watched by name; the mesh namespaces, by label.
	c.secrets = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.SecretName).String()
		}))
	c.secretInf = c.secrets.Core().V1().Secrets().Informer()
	c.meshNS = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = MeshLabel + "=" + MeshLabelValue }))
	nsInf := c.meshNS.Core().V1().Namespaces().Informer()
	c.roots = &rootPublisher{client: cfg.Client, namespaces: nsInf, log: c.log, written: map[string]string{}}

	onSecret := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.secretChanged() },
		UpdateFunc: func(any, any) { c.secretChanged() },
		DeleteFunc: func(any) { c.secretChanged() },
	}
	onNS := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.poke() },
		UpdateFunc: func(any, any) { c.poke() },
	}
	if _, err := c.secretInf.AddEventHandler(onSecret); err != nil {
		return nil, err
	}
	if _, err := nsInf.AddEventHandler(onNS); err != nil {
		return nil, err
	}
	return c, nil
}

// Store is the State in the CA Secret.
func (c *Coordinator) Store() trust.Store { return c.store }

// Leading reports whether this replica holds the Lease: only the leader
// drives rotations and automatic steps.
func (c *Coordinator) Leading() bool { return c.leader.Leading() }

// Holder is this replica's name in the Lease and in its evidence.
func (c *Coordinator) Holder() string { return c.cfg.Holder }

// Publish replaces this replica's evidence with acks (Evidence.Publish).
// The caller publishes every PublishPeriod.
func (c *Coordinator) Publish(ctx context.Context, acks []trust.ProxyAck) error {
	return c.evidence.Publish(ctx, acks)
}

// Others returns the other replicas' proxies and the replicas that
// cannot be counted, by name (Evidence.Others).
func (c *Coordinator) Others(ctx context.Context) ([]trust.ProxyAck, []string, error) {
	return c.evidence.Others(ctx)
}

// Roster returns the proxies (namespace/name) connected to this replica
// when it last saved its roster, as Start read them from its evidence
// ConfigMap: known and empty when there was no ConfigMap (a replica of
// this name never ran, or left and was forgotten); unknown when it holds
// no roster or a truncated one, or cannot be read (err says why). A
// replica's roster names only its own proxies: the others' are in their
// evidence. Before Start it is unknown, with an error.
func (c *Coordinator) Roster() (nodes []string, known bool, err error) {
	c.mu.Lock()
	r := c.roster
	c.mu.Unlock()
	if r == nil {
		return nil, false, errors.New("kube: the roster is read when the trust coordinator starts")
	}
	return slices.Clone(r.nodes), r.known, r.err
}

// SaveRoster records nodes, the proxies connected to this replica now,
// in its evidence ConfigMap under RosterKey, when they differ from the
// roster it holds. Past MaxProxies the roster is saved truncated, and a
// restart waits the whole warm-up.
func (c *Coordinator) SaveRoster(nodes []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), rosterTimeout)
	defer cancel()
	return c.evidence.saveRoster(ctx, nodes)
}

// rosterTimeout bounds a save of the roster, which RosterKeeper calls
// without a context.
const rosterTimeout = 10 * time.Second

// Changed returns a channel closed the next time the Secret may have
// changed (an event of the watch on it); a new channel after each close.
// Take it before Load, so no change between the two goes unnoticed.
func (c *Coordinator) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *Coordinator) secretChanged() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.poke()
}

func (c *Coordinator) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Start reads this replica's roster (Roster), announces this replica
// (its evidence ConfigMap, pending: the other replicas' gates wait for
// its first Publish), starts the watches
// and waits for them to sync, then campaigns for the Lease in the
// background. Call it before serving proxies. When ctx ends, the
// Coordinator releases the Lease if held and says in its evidence that
// it left; Wait returns then.
func (c *Coordinator) Start(ctx context.Context) error {
	r := c.evidence.readRoster(ctx)
	c.mu.Lock()
	c.roster = &r
	c.mu.Unlock()
	if err := c.evidence.announce(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	if err := c.sync(ctx); err != nil {
		// Not known as pending for ten minutes: say it left.
		cancel()
		c.secrets.Shutdown()
		c.meshNS.Shutdown()
		c.leave()
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.err = c.leader.Run(ctx) })
	wg.Go(func() { c.loop(ctx) })
	go func() {
		wg.Wait()
		cancel()
		c.secrets.Shutdown()
		c.meshNS.Shutdown()
		c.leave()
		close(c.done)
	}()
	return nil
}

// syncTimeout bounds the first sync of the watches: one that cannot list
// (RBAC without list and watch on the Secret, say) would otherwise keep
// the control plane from starting without a word.
const syncTimeout = 30 * time.Second

// sync starts the watches and waits until they have listed.
func (c *Coordinator) sync(ctx context.Context) error {
	c.secrets.Start(ctx.Done())
	c.meshNS.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	for _, f := range []informers.SharedInformerFactory{c.secrets, c.meshNS} {
		for typ, ok := range f.WaitForCacheSync(syncCtx.Done()) {
			if !ok {
				return fmt.Errorf("kube: trust coordinator: the watch on %v in %s did not sync within %s (can it list and watch them?)", typ, c.cfg.Namespace, syncTimeout)
			}
		}
	}
	return nil
}

// leave says in this replica's evidence that it left, with a context of
// its own: the one it ran with has ended.
func (c *Coordinator) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.evidence.leave(ctx); err != nil {
		c.log.Warn("cannot say in the trust evidence that this replica left", "err", err)
	}
}

// Wait blocks until the Coordinator has stopped after its context ended
// (the Lease released), and returns what stopped it.
func (c *Coordinator) Wait() error {
	<-c.done
	return c.err
}

// loop keeps the root ConfigMaps in line while leading.
func (c *Coordinator) loop(ctx context.Context) {
	tick := time.NewTicker(c.cfg.RootsEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.leader.transitions():
			c.roots.forget()
		case <-tick.C:
			c.roots.forget()
		case <-c.kick:
		}
		if !c.Leading() {
			continue
		}
		pemRoots, err := c.bundleRoots()
		if err != nil {
			c.log.Warn("cannot read the trust bundle's roots from the CA secret", "err", err)
			continue
		}
		if err := c.roots.sync(ctx, pemRoots); err != nil && ctx.Err() == nil {
			c.log.Warn("cannot publish the trust anchors for starting agents; trying again", "err", err)
			time.AfterFunc(5*time.Second, c.poke)
		}
	}
}

// bundleRoots returns the PEM roots of the bundle of the Secret the
// watch holds now.
func (c *Coordinator) bundleRoots() (string, error) {
	o, ok, err := c.secretInf.GetStore().GetByKey(c.cfg.Namespace + "/" + c.cfg.SecretName)
	if err != nil {
		return "", err
	}
	sec, isSecret := o.(*corev1.Secret)
	if !ok || !isSecret {
		return "", fmt.Errorf("secret %s/%s: not found", c.cfg.Namespace, c.cfg.SecretName)
	}
	if c.decoded.version == sec.ResourceVersion {
		return c.decoded.pem, nil
	}
	st, err := DecodeSecret(sec, c.cfg.TrustDomain, c.cfg.Now())
	if err != nil {
		return "", err
	}
	c.decoded.version, c.decoded.pem = sec.ResourceVersion, string(pemutil.EncodeCerts(st.Bundle().Roots))
	return c.decoded.pem, nil
}
