package incluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// DefaultName is the default name of the CA Secret and of the Lease.
const DefaultName = "bulwark-ca"

// StateKey is the key of the CA Secret that holds the trust State
// (trust.Marshal). The other keys (trust.CAFiles) show its active
// authority to readers from before it.
const StateKey = "trust-state.json"

// SecretStoreConfig says which Secret holds the trust State.
type SecretStoreConfig struct {
	Client    kubernetes.Interface // required
	Namespace string               // required: the control plane's namespace
	// Name of the Secret; defaults to DefaultName.
	Name string
	// TrustDomain of the State: a stored State of another is refused, and
	// a Secret holding only a CA's files (from before the State) is
	// migrated as of it. Required.
	TrustDomain spiffeid.TrustDomain
	// Now is the clock of a migration; defaults to time.Now.
	Now func() time.Time
}

// SecretStore keeps a trust.State in the CA Secret, under StateKey, with
// compare-and-swap: Save writes only if the stored State.Revision is the
// one the caller loaded, and the write itself names the resourceVersion
// it read, so a writer that came in between makes it fail with
// trust.ErrConflict. Two replicas can therefore never both win a step,
// whatever each believes about the Lease.
//
// Every Save also rewrites the CA files kept beside the State (root-cert.pem
// with every root of the bundle; ca-cert.pem, ca-key.pem, cert-chain.pem
// and root-key.pem of the active authority), so that a reader from
// before the State (ca.Load of the directory EnsureCASecret writes) sees
// the authority that signs now. Safe for concurrent use.
type SecretStore struct {
	cfg SecretStoreConfig
}

var _ trust.Store = (*SecretStore)(nil)

// NewSecretStore checks cfg and fills in its defaults.
func NewSecretStore(cfg SecretStoreConfig) (*SecretStore, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.TrustDomain.IsZero() {
		return nil, errors.New("kube: secret store: Client, Namespace and TrustDomain are required")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &SecretStore{cfg: cfg}, nil
}

func (s *SecretStore) ref() string { return "secret " + s.cfg.Namespace + "/" + s.cfg.Name }

// Load returns the State in the Secret. A Secret with only the CA files
// is returned as one active authority (Origin "legacy") at Sequence 1,
// Revision 0, not yet saved. A missing Secret is an error that wraps
// fs.ErrNotExist.
func (s *SecretStore) Load(ctx context.Context) (*trust.State, error) {
	sec, err := s.cfg.Client.CoreV1().Secrets(s.cfg.Namespace).Get(ctx, s.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("kube: %s: %w", s.ref(), fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("kube: %s: %w", s.ref(), err)
	}
	return s.decode(sec)
}

// decode reads the State of a Secret, migrating CA files alone.
func (s *SecretStore) decode(sec *corev1.Secret) (*trust.State, error) {
	return DecodeSecret(sec, s.cfg.TrustDomain, s.cfg.Now())
}

// DecodeSecret returns the trust State a CA Secret holds: the one under
// StateKey, or, when there is none, the CA files migrated as one active
// authority of trust domain td (trust.FromCAFiles: Origin "legacy",
// Sequence 1, Revision 0). A State of another trust domain than td is
// refused.
func DecodeSecret(sec *corev1.Secret, td spiffeid.TrustDomain, now time.Time) (*trust.State, error) {
	ref := "secret " + sec.Namespace + "/" + sec.Name
	b, ok := sec.Data[StateKey]
	if !ok {
		return trust.FromCAFiles(ref, sec.Data, td, "legacy", now)
	}
	st, err := trust.Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("kube: %s: key %s: %w", ref, StateKey, err)
	}
	if st.TrustDomain != td {
		return nil, fmt.Errorf("kube: %s: key %s: the state is of trust domain %s, not %s", ref, StateKey, st.TrustDomain, td)
	}
	return st, nil
}

// Save stores st if the Secret still holds Revision st.Revision (0: no
// State yet, only the CA files or no Secret at all), and bumps
// st.Revision. trust.ErrConflict when another writer saved first.
func (s *SecretStore) Save(ctx context.Context, st *trust.State) error {
	secrets := s.cfg.Client.CoreV1().Secrets(s.cfg.Namespace)
	sec, err := secrets.Get(ctx, s.cfg.Name, metav1.GetOptions{})
	missing := apierrors.IsNotFound(err)
	if err != nil && !missing {
		return fmt.Errorf("kube: %s: %w", s.ref(), err)
	}
	var stored uint64
	if !missing {
		if b, ok := sec.Data[StateKey]; ok {
			cur, err := trust.Unmarshal(b)
			if err != nil {
				return fmt.Errorf("kube: %s: key %s: %w", s.ref(), StateKey, err)
			}
			stored = cur.Revision
		}
	}
	if stored != st.Revision {
		return fmt.Errorf("kube: %s holds revision %d, not %d: %w", s.ref(), stored, st.Revision, trust.ErrConflict)
	}
	if stored == 0 && !missing {
		if err := s.checkFirstSave(sec, st); err != nil {
			return err
		}
	}
	if st.TrustDomain != s.cfg.TrustDomain {
		return fmt.Errorf("kube: %s: the state is of trust domain %s, the store of %s: %w", s.ref(), st.TrustDomain, s.cfg.TrustDomain, trust.ErrInvalid)
	}
	data, err := secretData(st)
	if err != nil {
		return fmt.Errorf("kube: %s: %w", s.ref(), err)
	}
	if missing {
		maps.DeleteFunc(data, func(_ string, v []byte) bool { return v == nil })
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s.cfg.Name, Namespace: s.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "bulwark"}},
			Type: corev1.SecretTypeOpaque, Data: data,
		}, metav1.CreateOptions{})
	} else {
		sec = sec.DeepCopy()
		if sec.Data == nil {
			sec.Data = map[string][]byte{}
		}
		// Keys of our own are replaced or removed, anyone else's kept.
		for k, v := range data {
			if v == nil {
				delete(sec.Data, k)
			} else {
				sec.Data[k] = v
			}
		}
		// The Update names sec.ResourceVersion: a write since the Get is
		// a conflict, never overwritten.
		_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
	}
	switch {
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		return fmt.Errorf("kube: %s changed while revision %d was saved: %w", s.ref(), st.Revision+1, trust.ErrConflict)
	case err != nil:
		return fmt.Errorf("kube: save the trust state in %s: %w", s.ref(), err)
	}
	st.Revision++
	return nil
}

// checkFirstSave refuses to store a State over a Secret holding a CA
// from before the State unless the State holds that CA (it was migrated
// from it): a State made anew must not replace a running mesh's CA, which
// would cut every workload off. As trust.DirStore does for a directory.
func (s *SecretStore) checkFirstSave(sec *corev1.Secret, st *trust.State) error {
	b := sec.Data[ca.CertFile]
	if len(b) == 0 {
		return nil
	}
	certs, err := pemutil.ParseCerts(b)
	if err != nil {
		return fmt.Errorf("kube: %s: key %s: %w: %v", s.ref(), ca.CertFile, ca.ErrInvalidCA, err)
	}
	for _, a := range st.Authorities {
		if a.Signing().Equal(certs[0]) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s holds a CA that this state does not (load the Secret to migrate it, instead of replacing it): %w",
		trust.ErrConflict, s.ref(), ca.ErrExists)
}

// secretData is what a Secret holds for st: the State at its next
// revision, and the CA files that show its active authority
// (trust.CAFiles; nil for a file to remove).
func secretData(st *trust.State) (map[string][]byte, error) {
	next := *st
	next.Revision++
	b, err := trust.Marshal(&next)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", StateKey, err)
	}
	files, err := trust.CAFiles(st)
	if err != nil {
		return nil, err
	}
	files[StateKey] = b
	return files, nil
}
