package incluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// CASecretConfig says where the CA lives in the cluster.
type CASecretConfig struct {
	Client    kubernetes.Interface // required
	Namespace string               // required: the control plane's namespace
	// Name of the Secret; defaults to "bulwark-ca".
	Name string
	// LeaseName of the Lease that guards creating it; defaults to
	// "bulwark-ca".
	LeaseName string
	// Holder identifies this replica in the Lease (its pod name).
	Holder string
	// TrustDomain of a CA created here. Required.
	TrustDomain spiffeid.TrustDomain
	// Dir receives the CA files read from the Secret. Required.
	Dir    string
	Logger *slog.Logger
}

// Keys of the CA Secret: the files of a CA directory.
var caFiles = []string{ca.RootCertFile, ca.RootKeyFile, ca.CertFile, ca.KeyFile, ca.ChainFile}

// EnsureCASecret makes the CA Secret exist and writes its files to
// cfg.Dir, ready for ca.Load. When the Secret is missing, the replica
// that holds the Lease creates a new CA and stores it, with its trust
// State at revision 1 (StateKey; SecretStore reads and changes it
// afterwards); the others wait for it. A Secret that exists is never replaced: an operator's own CA
// (no root key) is used as it is. So every replica, and every restart,
// uses the same CA.
func EnsureCASecret(ctx context.Context, cfg CASecretConfig) error {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Dir == "" || cfg.TrustDomain.IsZero() {
		return errors.New("kube: Client, Namespace, Dir and TrustDomain are required")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.LeaseName == "" {
		cfg.LeaseName = DefaultName
	}
	if cfg.Holder == "" {
		h, _ := os.Hostname()
		cfg.Holder = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("component", "ca-secret", "secret", cfg.Namespace+"/"+cfg.Name)
	secrets := cfg.Client.CoreV1().Secrets(cfg.Namespace)

	if sec, err := secrets.Get(ctx, cfg.Name, metav1.GetOptions{}); err == nil {
		return writeCA(sec, cfg.Dir)
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("kube: CA secret: %w", err)
	}

	// Missing: whoever holds the Lease creates it; everyone waits for it.
	electCtx, stopElection := context.WithCancel(ctx)
	defer stopElection()
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.LeaseName},
		Client:     cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Holder},
	}
	created := make(chan error, 1)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, ReleaseOnCancel: true,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				created <- createCA(ctx, cfg, log)
			},
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return err
	}
	go elector.Run(electCtx)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-created:
			if err != nil {
				return err
			}
		case <-tick.C:
		}
		sec, err := secrets.Get(ctx, cfg.Name, metav1.GetOptions{})
		if err == nil {
			return writeCA(sec, cfg.Dir)
		}
		if !apierrors.IsNotFound(err) {
			log.Warn("cannot read the CA secret yet", "err", err)
		}
	}
}

// createCA makes a CA and stores it, with its trust State, unless
// another replica got there first.
func createCA(ctx context.Context, cfg CASecretConfig, log *slog.Logger) error {
	secrets := cfg.Client.CoreV1().Secrets(cfg.Namespace)
	if _, err := secrets.Get(ctx, cfg.Name, metav1.GetOptions{}); err == nil {
		return nil
	}
	tmp, err := os.MkdirTemp("", "bulwark-ca-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "ca")
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: cfg.TrustDomain}); err != nil {
		return err
	}
	data := map[string][]byte{}
	for _, f := range caFiles {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		data[f] = b
	}
	st, err := trust.FromCAFiles("the new CA", data, cfg.TrustDomain, "init", time.Now())
	if err != nil {
		return err
	}
	store, err := NewSecretStore(SecretStoreConfig{Client: cfg.Client, Namespace: cfg.Namespace, Name: cfg.Name, TrustDomain: cfg.TrustDomain})
	if err != nil {
		return err
	}
	// Revision 0 on a missing Secret creates it; another replica's
	// Secret created meanwhile is a conflict, and that one is used.
	switch err := store.Save(ctx, st); {
	case errors.Is(err, trust.ErrConflict):
		return nil
	case err != nil:
		return fmt.Errorf("kube: create CA secret: %w", err)
	}
	log.Info("created the mesh CA and stored it", "trust_domain", cfg.TrustDomain.String(), "authority", st.Active().ID)
	return nil
}

// writeCA writes the Secret's CA files to dir.
func writeCA(sec *corev1.Secret, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range caFiles {
		b, ok := sec.Data[f]
		if !ok {
			continue
		}
		mode := os.FileMode(0o644)
		if f == ca.KeyFile || f == ca.RootKeyFile {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, mode); err != nil {
			return err
		}
	}
	return nil
}
