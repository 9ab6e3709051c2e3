package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// Lifetimes.
const (
	// DefaultLeafTTL is the lifetime of a workload certificate.
	DefaultLeafTTL = 24 * time.Hour
	// MaxLeafTTL caps leaf lifetimes unless a CA is built with
	// AllowLongLived.
	MaxLeafTTL = 24 * time.Hour
	// DefaultRootTTL and DefaultIntermediateTTL are used by Init.
	DefaultRootTTL         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateTTL = 2 * 365 * 24 * time.Hour
	// backdate allows for clocks a little behind the CA's. A leaf's is
	// taken out of its lifetime (at most a tenth of it), never added.
	backdate = 30 * time.Second
)

// InitConfig configures Init.
type InitConfig struct {
	// Dir receives the CA material; it is created if missing. Required.
	Dir string
	// TrustDomain names the CA's trust domain in the certificates'
	// subjects and name constraints. Required.
	TrustDomain spiffeid.TrustDomain
	// RootTTL and IntermediateTTL default to 10 and 2 years.
	RootTTL, IntermediateTTL time.Duration
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
}

// Init creates a new root and intermediate in cfg.Dir. It refuses to
// touch a directory that already holds CA material: minting a new root
// for a running mesh would cut every workload off from every other.
func Init(cfg InitConfig) error {
	if cfg.Dir == "" || cfg.TrustDomain.IsZero() {
		return errors.New("ca: Dir and TrustDomain are required")
	}
	if cfg.RootTTL <= 0 {
		cfg.RootTTL = DefaultRootTTL
	}
	if cfg.IntermediateTTL <= 0 {
		cfg.IntermediateTTL = DefaultIntermediateTTL
	}
	if cfg.IntermediateTTL > cfg.RootTTL {
		return errors.New("ca: the intermediate cannot outlive the root")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	for _, f := range []string{RootCertFile, RootKeyFile, CertFile, KeyFile} {
		if exists(cfg.Dir, f) {
			return fmt.Errorf("ca: %s: %w; refusing to replace it", filepath.Join(cfg.Dir, f), ErrExists)
		}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return err
	}
	now := cfg.Now()
	td := cfg.TrustDomain.String()

	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	rootTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"Bulwark"}, CommonName: "Bulwark root CA " + td},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(cfg.RootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{cfg.TrustDomain.ID().URL()},
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("ca: root: %w", err)
	}
	root, _ := x509.ParseCertificate(rootDER)

	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	intTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"Bulwark"}, CommonName: "Bulwark intermediate CA " + td},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(cfg.IntermediateTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{cfg.TrustDomain.ID().URL()},
	}
	intDER, err := x509.CreateCertificate(rand.Reader, intTmpl, root, intKey.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("ca: intermediate: %w", err)
	}
	intCert, _ := x509.ParseCertificate(intDER)

	rootKeyPEM, err := pemutil.EncodeKey(rootKey)
	if err != nil {
		return err
	}
	intKeyPEM, err := pemutil.EncodeKey(intKey)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{RootKeyFile, rootKeyPEM, 0o600},
		{KeyFile, intKeyPEM, 0o600},
		{RootCertFile, pemutil.EncodeCerts([]*x509.Certificate{root}), 0o644},
		{CertFile, pemutil.EncodeCerts([]*x509.Certificate{intCert}), 0o644},
	} {
		if err := writeNew(filepath.Join(cfg.Dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
	}
	return nil
}

// Config configures a CA built with New.
type Config struct {
	// TrustDomain is the only trust domain the CA issues for. Required.
	TrustDomain spiffeid.TrustDomain
	// Roots are the trust anchors handed to workloads. Required.
	Roots []*x509.Certificate
	// Chain is the signing certificate first, then any intermediates up
	// to (not including) a root. Required.
	Chain []*x509.Certificate
	// Signer holds the signing certificate's private key: an in-memory
	// key, or an HSM or KMS behind crypto.Signer. Required.
	Signer crypto.Signer
	// DefaultTTL is the lifetime of a leaf when the caller asks for none;
	// defaults to 24h.
	DefaultTTL time.Duration
	// MaxTTL caps leaf lifetimes; defaults to 24h. Above 24h only with
	// AllowLongLived.
	MaxTTL         time.Duration
	AllowLongLived bool
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
	// After waits on the clock of Now: a Source renews when it fires.
	// Defaults to time.After; a test that fakes Now fakes this with it.
	After func(d time.Duration) <-chan time.Time
	// Registerer receives the CA's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// CA issues X.509-SVIDs. It is safe for concurrent use.
type CA struct {
	td         spiffeid.TrustDomain
	roots      []*x509.Certificate
	chain      []*x509.Certificate
	signer     crypto.Signer
	defaultTTL time.Duration
	maxTTL     time.Duration
	now        func() time.Time
	after      func(time.Duration) <-chan time.Time
	m          *metrics
	issued     atomic.Uint64
}

// New returns a CA after checking that its material fits together: the
// signer matches the signing certificate, which is a CA certificate that
// chains to one of the roots and is valid now.
func New(cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() || len(cfg.Roots) == 0 || len(cfg.Chain) == 0 || cfg.Signer == nil {
		return nil, errors.New("ca: TrustDomain, Roots, Chain and Signer are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = MaxLeafTTL
	}
	if cfg.MaxTTL > MaxLeafTTL && !cfg.AllowLongLived {
		return nil, fmt.Errorf("ca: a maximum leaf lifetime of %s is above %s; set AllowLongLived to mean it", cfg.MaxTTL, MaxLeafTTL)
	}
	if cfg.DefaultTTL <= 0 {
		cfg.DefaultTTL = min(DefaultLeafTTL, cfg.MaxTTL)
	}
	if cfg.DefaultTTL > cfg.MaxTTL {
		return nil, fmt.Errorf("ca: default leaf lifetime %s exceeds the maximum %s", cfg.DefaultTTL, cfg.MaxTTL)
	}
	// A CA made for one trust domain names it in its certificates; it
	// must not be talked into issuing for another.
	for _, c := range append(append([]*x509.Certificate{}, cfg.Roots...), cfg.Chain...) {
		for _, u := range c.URIs {
			if u.Scheme == "spiffe" && u.Host != cfg.TrustDomain.Name() {
				return nil, fmt.Errorf("ca: %w: %q is a CA for trust domain %s, not %s", ErrInvalidCA, c.Subject.CommonName, u.Host, cfg.TrustDomain)
			}
		}
	}
	signing := cfg.Chain[0]
	if !signing.IsCA || !signing.BasicConstraintsValid || signing.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca: %w: the signing certificate %q is not a CA certificate with certSign", ErrInvalidCA, signing.Subject)
	}
	if !publicKeysEqual(signing.PublicKey, cfg.Signer.Public()) {
		return nil, fmt.Errorf("ca: %w: the private key does not belong to the signing certificate %q", ErrInvalidCA, signing.Subject)
	}
	now := cfg.Now()
	if now.Before(signing.NotBefore) || now.After(signing.NotAfter) {
		return nil, fmt.Errorf("ca: %w: the signing certificate is valid from %s to %s, not now", ErrInvalidCA, signing.NotBefore, signing.NotAfter)
	}
	roots := x509.NewCertPool()
	for _, r := range cfg.Roots {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range cfg.Chain[1:] {
		inter.AddCert(c)
	}
	if _, err := signing.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("ca: %w: the signing certificate does not chain to the roots: %v", ErrInvalidCA, err)
	}
	c := &CA{
		td: cfg.TrustDomain, roots: cfg.Roots, chain: cfg.Chain, signer: cfg.Signer,
		defaultTTL: cfg.DefaultTTL, maxTTL: cfg.MaxTTL, now: cfg.Now, after: cfg.After, m: newMetrics(cfg.Registerer),
	}
	c.m.expiry.WithLabelValues("signing").Set(float64(signing.NotAfter.Unix()))
	earliest := cfg.Roots[0].NotAfter
	for _, r := range cfg.Roots {
		if r.NotAfter.Before(earliest) {
			earliest = r.NotAfter
		}
	}
	c.m.expiry.WithLabelValues("root").Set(float64(earliest.Unix()))
	return c, nil
}

// LoadConfig configures Load: the directory, and the rest of Config.
type LoadConfig struct {
	Dir string
	Config
}

// Load reads CA material from a directory (the layout Init writes, or an
// organisation's own root, intermediate and key) and returns the CA. A
// missing directory or file is ErrNoCA; unreadable or inconsistent
// material is ErrInvalidCA. It never creates anything.
func Load(cfg LoadConfig) (*CA, error) {
	missing := []string{}
	for _, f := range []string{RootCertFile, CertFile, KeyFile} {
		if !exists(cfg.Dir, f) {
			missing = append(missing, f)
		}
	}
	if len(missing) == 3 {
		return nil, fmt.Errorf("ca: %s: %w (create it with 'bulwark ca init --dir %s', or plug in your own: %s, %s, %s)",
			cfg.Dir, ErrNoCA, cfg.Dir, RootCertFile, CertFile, KeyFile)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("ca: %s: %w: missing %v", cfg.Dir, ErrInvalidCA, missing)
	}
	roots, err := readCerts(filepath.Join(cfg.Dir, RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("ca: %w: %v", ErrInvalidCA, err)
	}
	chain, err := readCerts(filepath.Join(cfg.Dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("ca: %w: %v", ErrInvalidCA, err)
	}
	if exists(cfg.Dir, ChainFile) {
		more, err := readCerts(filepath.Join(cfg.Dir, ChainFile))
		if err != nil {
			return nil, fmt.Errorf("ca: %w: %v", ErrInvalidCA, err)
		}
		for _, c := range more {
			if !c.Equal(chain[0]) && !isRoot(c, roots) {
				chain = append(chain, c)
			}
		}
	}
	key, err := readKey(filepath.Join(cfg.Dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("ca: %w: %v", ErrInvalidCA, err)
	}
	cfg.Config.Roots, cfg.Config.Chain, cfg.Config.Signer = roots, chain, key
	return New(cfg.Config)
}

func isRoot(c *x509.Certificate, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if r.Equal(c) {
			return true
		}
	}
	return false
}

// TrustDomain returns the trust domain the CA issues for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Roots returns the trust anchors. The slice is shared; do not modify.
func (c *CA) Roots() []*x509.Certificate { return c.roots }

// MaxTTL returns the longest leaf lifetime the CA issues.
func (c *CA) MaxTTL() time.Duration { return c.maxTTL }

// SignSVID issues a leaf for id with public key pub. ttl zero means the
// default; a longer ttl than the maximum is shortened to it, and no leaf
// outlives the signing certificate. The lifetime is NotAfter - NotBefore:
// the leaf is valid from 30 seconds (or a tenth of ttl, if less) before
// now, for clocks a little behind the CA's, and that much less after. Everything about the certificate
// comes from the arguments and the profile, nothing from any CSR the key
// arrived in. The result is the leaf followed by the chain up to (not
// including) the root.
func (c *CA) SignSVID(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration) ([]*x509.Certificate, error) {
	return c.sign(pub, id, pkix.Name{Organization: []string{subjectOrg}}, ttl)
}

// subjectOrg is the organization in every leaf's subject.
const subjectOrg = "Bulwark"

// sign issues a leaf for id with pub, the given subject and ttl; see
// SignSVID.
func (c *CA) sign(pub crypto.PublicKey, id spiffeid.ID, subject pkix.Name, ttl time.Duration) ([]*x509.Certificate, error) {
	if !id.MemberOf(c.td) {
		c.m.errors.WithLabelValues("foreign_id").Inc()
		return nil, fmt.Errorf("ca: %w: %s is not in %s", ErrForeignID, id, c.td)
	}
	if err := checkKey(pub); err != nil {
		c.m.errors.WithLabelValues("key").Inc()
		return nil, fmt.Errorf("ca: %w", err)
	}
	if ttl <= 0 {
		ttl = c.defaultTTL
	}
	ttl = min(ttl, c.maxTTL)
	now := c.now()
	notBefore := now.Add(-min(backdate, ttl/10))
	notAfter := notBefore.Add(ttl)
	if signing := c.chain[0]; notAfter.After(signing.NotAfter) {
		notAfter = signing.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.chain[0], pub, c.signer)
	if err != nil {
		c.m.errors.WithLabelValues("sign").Inc()
		return nil, fmt.Errorf("ca: sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		c.m.errors.WithLabelValues("sign").Inc()
		return nil, fmt.Errorf("ca: sign: %w", err)
	}
	out := append([]*x509.Certificate{leaf}, c.chain...)
	// The last line of defence: what leaves the CA follows the profile
	// and verifies against the bundle the workloads will use.
	if err := CheckSVID(out, c.roots, c.td, now, WithMaxLifetime(c.maxTTL)); err != nil {
		c.m.errors.WithLabelValues("profile").Inc()
		return nil, err
	}
	c.m.issued.Inc()
	c.issued.Add(1)
	return out, nil
}

func mustSerial() *big.Int {
	// 128 random bits, positive: RFC 5280 allows up to 20 octets.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(fmt.Sprintf("ca: no randomness: %v", err))
	}
	return n.Add(n, big.NewInt(1))
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}
