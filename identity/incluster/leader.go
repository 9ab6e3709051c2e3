package incluster

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaderConfig configures a Leader.
type LeaderConfig struct {
	Client    kubernetes.Interface // required
	Namespace string               // required: the control plane's namespace
	// Name of the Lease; defaults to "bulwark-ca", the one that guards
	// creating the CA Secret (EnsureCASecret), which must be done before
	// Run, not beside it: both would speak for the same holder.
	Name string
	// Holder names this replica (its pod name). Required.
	Holder string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's
	// (defaults 15s, 10s, 2s): a leader that cannot renew within
	// RenewDeadline stops leading, and another replica takes over a
	// LeaseDuration after the last renewal it saw (at once when the
	// leader released the Lease on shutdown).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger
}

// Leader holds the Lease for as long as it can while Run runs, and tries
// again whenever it has lost it. Leading is safe for concurrent use.
//
// The Lease elects who drives rotations; it does not make two replicas'
// writes exclusive (a leader cut off from the API server learns it lost
// the Lease only after RenewDeadline). The CA Secret's compare-and-swap
// (SecretStore) is what keeps two writers from both winning.
type Leader struct {
	cfg     LeaderConfig
	log     *slog.Logger
	leading atomic.Bool
	changed chan struct{}
}

// NewLeader checks cfg and fills in its defaults.
func NewLeader(cfg LeaderConfig) (*Leader, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Holder == "" {
		return nil, errors.New("kube: leader: Client, Namespace and Holder are required")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	if cfg.RenewDeadline <= 0 {
		cfg.RenewDeadline = 10 * time.Second
	}
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Leader{cfg: cfg, changed: make(chan struct{}, 1),
		log: cfg.Logger.With("component", "trust-leader", "lease", cfg.Namespace+"/"+cfg.Name, "holder", cfg.Holder)}, nil
}

// Leading reports whether this replica holds the Lease now.
func (l *Leader) Leading() bool { return l.leading.Load() }

// Holder is the name this replica holds the Lease under.
func (l *Leader) Holder() string { return l.cfg.Holder }

// transitions receives a value (coalesced) each time Leading changes.
// There is one receiver: the coordinator.
func (l *Leader) transitions() <-chan struct{} { return l.changed }

func (l *Leader) set(v bool) {
	if l.leading.Swap(v) != v {
		select {
		case l.changed <- struct{}{}:
		default:
		}
	}
}

// Run campaigns for the Lease until ctx ends, then releases it if held,
// so that another replica takes over at once instead of after
// LeaseDuration.
func (l *Leader) Run(ctx context.Context) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: l.cfg.Namespace, Name: l.cfg.Name},
		Client:     l.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: l.cfg.Holder},
	}
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, ReleaseOnCancel: true, Name: l.cfg.Name,
			LeaseDuration: l.cfg.LeaseDuration, RenewDeadline: l.cfg.RenewDeadline, RetryPeriod: l.cfg.RetryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					l.log.Info("leading: this replica drives the trust lifecycle")
					l.set(true)
				},
				OnStoppedLeading: func() {
					if l.leading.Load() {
						l.log.Info("no longer leading")
					}
					l.set(false)
				},
			},
		})
		if err != nil {
			return err
		}
		// Run returns when ctx ends or the Lease is lost; then campaign
		// again after a pause.
		elector.Run(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(l.cfg.RetryPeriod):
		}
	}
	return nil
}
