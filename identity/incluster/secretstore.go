package incluster

import (
	"context"
	"crypto"
	"crypto/x509"
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
// (trust.Marshal). The other keys (caFiles) are a view of its active
// authority, for readers from before it.
const StateKey = "trust-state.json"

// SecretStoreConfig says which Secret holds the trust State.
type SecretStoreConfig struct {
	Client    kubernetes.Interface // required
	Namespace string               // required: the control plane's namespace
	// Name of the Secret; defaults to DefaultName.
	Name string
	// TrustDomain of a Secret that holds only a CA's files (from before
	// the trust State), which Load migrates. Required.
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
// authority of trust domain td (Origin "legacy", Sequence 1, Revision 0).
func DecodeSecret(sec *corev1.Secret, td spiffeid.TrustDomain, now time.Time) (*trust.State, error) {
	ref := "secret " + sec.Namespace + "/" + sec.Name
	if b, ok := sec.Data[StateKey]; ok {
		st, err := trust.Unmarshal(b)
		if err != nil {
			return nil, fmt.Errorf("kube: %s: key %s: %w", ref, StateKey, err)
		}
		return st, nil
	}
	st, err := filesState(sec.Data, td, "legacy", now)
	if err != nil {
		return nil, fmt.Errorf("kube: %s: %w", ref, err)
	}
	return st, nil
}

// filesState builds the State of a CA kept as files: the signing
// certificate, its key, the chain above it up to the root it verifies
// to, and the root's key when Bulwark made the CA. origin is "legacy"
// for a Secret from before the State, "init" for a CA just made.
func filesState(data map[string][]byte, td spiffeid.TrustDomain, origin string, now time.Time) (*trust.State, error) {
	for _, k := range []string{ca.RootCertFile, ca.CertFile, ca.KeyFile} {
		if len(data[k]) == 0 {
			return nil, fmt.Errorf("key %s: missing: neither a trust state (%s) nor a CA", k, StateKey)
		}
	}
	roots, err := pemutil.ParseCerts(data[ca.RootCertFile])
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", ca.RootCertFile, err)
	}
	chain, err := pemutil.ParseCerts(data[ca.CertFile])
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", ca.CertFile, err)
	}
	if more := data[ca.ChainFile]; len(more) > 0 {
		certs, err := pemutil.ParseCerts(more)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", ca.ChainFile, err)
		}
		for _, c := range certs {
			if !c.Equal(chain[0]) && !containsCert(roots, c) {
				chain = append(chain, c)
			}
		}
	}
	key, err := pemutil.ParseKey(data[ca.KeyFile])
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", ca.KeyFile, err)
	}
	var rootKey crypto.Signer
	if b := data[ca.RootKeyFile]; len(b) > 0 {
		if rootKey, err = pemutil.ParseKey(b); err != nil {
			return nil, fmt.Errorf("key %s: %w", ca.RootKeyFile, err)
		}
	}
	top := chain[len(chain)-1]
	var root *x509.Certificate
	for _, r := range roots {
		if top.CheckSignatureFrom(r) == nil {
			root = r
			break
		}
	}
	if root == nil {
		return nil, fmt.Errorf("key %s: no root there signed %q", ca.RootCertFile, top.Subject.CommonName)
	}
	a, err := trust.NewAuthority(root, rootKey, chain, key, origin)
	if err != nil {
		return nil, err
	}
	return trust.New(td, a, trust.Operation{Who: "migration", Now: now}), nil
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
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
	data, err := secretData(st)
	if err != nil {
		return fmt.Errorf("kube: %s: %w", s.ref(), err)
	}
	if missing {
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s.cfg.Name, Namespace: s.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "bulwark"}},
			Type: corev1.SecretTypeOpaque, Data: data,
		}, metav1.CreateOptions{})
	} else {
		sec = sec.DeepCopy()
		// Keys of our own are replaced, anyone else's kept.
		for _, k := range caFiles {
			delete(sec.Data, k)
		}
		if sec.Data == nil {
			sec.Data = map[string][]byte{}
		}
		maps.Copy(sec.Data, data)
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

// secretData is what a Secret holds for st: the State at its next
// revision, and the CA files of its active authority.
func secretData(st *trust.State) (map[string][]byte, error) {
	next := *st
	next.Revision++
	b, err := trust.Marshal(&next)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", StateKey, err)
	}
	files, err := legacyFiles(st)
	if err != nil {
		return nil, err
	}
	files[StateKey] = b
	return files, nil
}

// legacyFiles is the view of st that readers of a CA directory
// understand: every root of the bundle (so they trust what the bundle
// trusts), and the active authority's signing certificate, key, chain
// and root key (when held).
func legacyFiles(st *trust.State) (map[string][]byte, error) {
	act := st.Active()
	if act == nil {
		return nil, fmt.Errorf("%w: no authority is active", trust.ErrIllegal)
	}
	key, err := pemutil.EncodeKey(act.Key)
	if err != nil {
		return nil, fmt.Errorf("authority %s: key: %w", act.ID, err)
	}
	files := map[string][]byte{
		ca.RootCertFile: pemutil.EncodeCerts(st.Bundle().Roots),
		ca.CertFile:     pemutil.EncodeCerts(act.Chain[:1]),
		ca.KeyFile:      key,
	}
	if len(act.Chain) > 1 {
		files[ca.ChainFile] = pemutil.EncodeCerts(act.Chain[1:])
	}
	if act.RootKey != nil {
		if files[ca.RootKeyFile], err = pemutil.EncodeKey(act.RootKey); err != nil {
			return nil, fmt.Errorf("authority %s: root key: %w", act.ID, err)
		}
	}
	return files, nil
}
