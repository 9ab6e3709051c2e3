package trust

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// backdate allows for clocks a little behind ours, as package ca does for
// the certificates of ca.Init; CRLs get it too, since a proxy whose clock
// is behind refuses a CRL issued "in the future", and with it every leaf
// of that issuer.
const backdate = 30 * time.Second

// MintRoot makes a new self-signed root for td: ECDSA P-256, valid from
// 30 seconds before now for ttl, with the profile of ca.Init (URI SAN of
// the trust domain, certSign and cRLSign). Its subject names the
// generation (the first 8 hex digits of its key identifier), so that two
// roots of one trust domain are told apart in status and in Envoy's
// /certs.
func MintRoot(td spiffeid.TrustDomain, ttl time.Duration, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	if td.IsZero() || ttl <= 0 {
		return nil, nil, fmt.Errorf("%w: a root needs a trust domain and a positive lifetime", ErrInvalid)
	}
	return mintCA(td, "root", now.Add(ttl), nil, nil, now)
}

// MintIntermediate makes a new intermediate under root, signed with
// rootKey: ECDSA P-256, path length zero, valid from 30 seconds before now
// for ttl but never past the root.
func MintIntermediate(td spiffeid.TrustDomain, root *x509.Certificate, rootKey crypto.Signer, ttl time.Duration, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	if td.IsZero() || root == nil || rootKey == nil || ttl <= 0 {
		return nil, nil, fmt.Errorf("%w: an intermediate needs a trust domain, a root, its key and a positive lifetime", ErrInvalid)
	}
	if !publicKeysEqual(root.PublicKey, rootKey.Public()) {
		return nil, nil, fmt.Errorf("%w: the root key does not belong to root %q", ErrInvalid, root.Subject.CommonName)
	}
	if err := namesOnly(td, root); err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	if !notAfter.After(now) {
		return nil, nil, fmt.Errorf("%w: root %q expired at %s", ErrInvalid, root.Subject.CommonName, root.NotAfter.UTC().Format(time.RFC3339))
	}
	return mintCA(td, "intermediate", notAfter, root, rootKey, now)
}

// mintCA makes a CA certificate of the profile of ca.Init for td, a root
// (parent nil: self-signed) or an intermediate under parent (path length
// zero), valid from 30 seconds before now until notAfter, with a new
// ECDSA P-256 key. Its subject names the generation: the first 8 hex
// digits of its key identifier.
func mintCA(td spiffeid.TrustDomain, kind string, notAfter time.Time, parent *x509.Certificate, parentKey crypto.Signer, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	ski, err := keyID(key.Public())
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject: pkix.Name{Organization: []string{"Bulwark"},
			CommonName: fmt.Sprintf("Bulwark %s CA %s %x", kind, td, ski[:4])},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        parent != nil,
		SubjectKeyId:          ski,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("trust: %s: %w", kind, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("trust: %s: %w", kind, err)
	}
	return c, key, nil
}

// NewAuthority checks that the material fits together and returns it as
// an authority with no phase yet (Prepare gives it one): key belongs to
// chain[0], rootKey (nil when not held) to root, chain[0] is a CA
// certificate that can sign certificates and CRLs, chain verifies to root
// at the current time, and every certificate names the same trust domain.
// origin is recorded as Authority.Origin.
func NewAuthority(root *x509.Certificate, rootKey crypto.Signer, chain []*x509.Certificate, key crypto.Signer, origin string) (*Authority, error) {
	return newAuthority(root, rootKey, chain, key, origin, time.Now())
}

func newAuthority(root *x509.Certificate, rootKey crypto.Signer, chain []*x509.Certificate, key crypto.Signer, origin string, now time.Time) (*Authority, error) {
	if root == nil || len(chain) == 0 || chain[0] == nil || key == nil {
		return nil, fmt.Errorf("%w: an authority needs a root, a chain and the signing key", ErrInvalid)
	}
	a := &Authority{Root: root, RootKey: rootKey, Chain: chain, Key: key, Origin: origin, ID: authorityID(chain[0])}
	if err := a.check(); err != nil {
		return nil, err
	}
	if err := a.verify(now); err != nil {
		return nil, err
	}
	return a, nil
}

// check is what every authority must satisfy whatever the time: the keys
// belong to their certificates, the signing certificate can sign leaves
// and CRLs, the chain's signatures lead to the root, one trust domain.
func (a *Authority) check() error {
	signing := a.Chain[0]
	name := func(c *x509.Certificate) string { return fmt.Sprintf("%q", c.Subject.CommonName) }
	if !publicKeysEqual(signing.PublicKey, a.Key.Public()) {
		return fmt.Errorf("%w: authority %s: key: does not belong to the signing certificate %s", ErrInvalid, a.ID, name(signing))
	}
	if a.RootKey != nil && !publicKeysEqual(a.Root.PublicKey, a.RootKey.Public()) {
		return fmt.Errorf("%w: authority %s: root key: does not belong to the root %s", ErrInvalid, a.ID, name(a.Root))
	}
	if !signing.IsCA || !signing.BasicConstraintsValid || signing.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: authority %s: the signing certificate %s is not a CA certificate with certSign", ErrInvalid, a.ID, name(signing))
	}
	// Proxies refuse a leaf whose issuer published no CRL, so an
	// authority that cannot sign one cannot sign leaves either.
	if signing.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return fmt.Errorf("%w: authority %s: the signing certificate %s lacks the cRLSign key usage, which the CRL every proxy needs from it takes", ErrInvalid, a.ID, name(signing))
	}
	if len(signing.SubjectKeyId) == 0 {
		return fmt.Errorf("%w: authority %s: the signing certificate %s has no subject key identifier, which its CRL must name", ErrInvalid, a.ID, name(signing))
	}
	for i := range a.Chain {
		parent := a.Root
		if i+1 < len(a.Chain) {
			parent = a.Chain[i+1]
		}
		if err := a.Chain[i].CheckSignatureFrom(parent); err != nil {
			return fmt.Errorf("%w: authority %s: chain[%d] %s is not signed by %s: %v", ErrInvalid, a.ID, i, name(a.Chain[i]), name(parent), err)
		}
	}
	if _, err := a.trustDomain(); err != nil {
		return err
	}
	return nil
}

// verify checks the chain with x509's path building at now: validity
// periods, path lengths and name constraints as any verifier would.
func (a *Authority) verify(now time.Time) error {
	roots := x509.NewCertPool()
	roots.AddCert(a.Root)
	inter := x509.NewCertPool()
	for _, c := range a.Chain[1:] {
		inter.AddCert(c)
	}
	if _, err := a.Chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: authority %s: the signing certificate does not verify to the root at %s: %v", ErrInvalid, a.ID, now.UTC().Format(time.RFC3339), err)
	}
	return nil
}

// trustDomain returns the trust domain the authority's certificates name
// in their SPIFFE URI SANs: one at most (an organisation's root may name
// none; then the zero value).
func (a *Authority) trustDomain() (spiffeid.TrustDomain, error) {
	var td spiffeid.TrustDomain
	for _, c := range append([]*x509.Certificate{a.Root}, a.Chain...) {
		for _, u := range c.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			got, err := spiffeid.TrustDomainFromString(u.Host)
			if err != nil {
				return td, fmt.Errorf("%w: authority %s: %q names %q, not a trust domain", ErrInvalid, a.ID, c.Subject.CommonName, u.Host)
			}
			if !td.IsZero() && got != td {
				return td, fmt.Errorf("%w: authority %s: its certificates name two trust domains, %s and %s", ErrInvalid, a.ID, td, got)
			}
			td = got
		}
	}
	return td, nil
}

// namesOnly refuses certificates that name a trust domain other than td.
func namesOnly(td spiffeid.TrustDomain, certs ...*x509.Certificate) error {
	for _, c := range certs {
		for _, u := range c.URIs {
			if u.Scheme == "spiffe" && u.Host != td.Name() {
				return fmt.Errorf("%w: %q is a CA for trust domain %s, not %s", ErrInvalid, c.Subject.CommonName, u.Host, td)
			}
		}
	}
	return nil
}

// DefaultMint returns the mint function of Advance that Bulwark uses when
// it holds the keys: for "root", a new root (rootTTL) and an intermediate
// under it (intTTL); for "intermediate", a new intermediate (intTTL)
// under old's root, signed with old's root key. The trust domain is the
// one old's certificates name. Both are made at now.
func DefaultMint(rootTTL, intTTL time.Duration, now time.Time) func(kind string, old *Authority) (*Authority, error) {
	return func(kind string, old *Authority) (*Authority, error) {
		if old == nil {
			return nil, fmt.Errorf("%w: nothing to mint a successor of", ErrInvalid)
		}
		td, err := old.trustDomain()
		if err != nil {
			return nil, err
		}
		if td.IsZero() {
			return nil, fmt.Errorf("%w: authority %s names no trust domain in its certificates, so none can be minted for it", ErrInvalid, old.ID)
		}
		switch kind {
		case "root":
			root, rootKey, err := MintRoot(td, rootTTL, now)
			if err != nil {
				return nil, err
			}
			cert, key, err := MintIntermediate(td, root, rootKey, min(intTTL, rootTTL), now)
			if err != nil {
				return nil, err
			}
			return newAuthority(root, rootKey, []*x509.Certificate{cert}, key, "minted", now)
		case "intermediate":
			if old.RootKey == nil {
				return nil, fmt.Errorf("%w: authority %s: the root key is not held, so no intermediate can be minted under its root; hand one in", ErrIllegal, old.ID)
			}
			cert, key, err := MintIntermediate(td, old.Root, old.RootKey, intTTL, now)
			if err != nil {
				return nil, err
			}
			return newAuthority(old.Root, old.RootKey, []*x509.Certificate{cert}, key, "minted", now)
		default:
			return nil, fmt.Errorf("%w: rotation kind %q (want root or intermediate)", ErrInvalid, kind)
		}
	}
}

// authorityID is the first 12 hex digits of the SHA-256 of the signing
// certificate: short enough to type, long enough never to collide within
// one trust domain's history.
func authorityID(signing *x509.Certificate) string {
	sum := sha256.Sum256(signing.Raw)
	return hex.EncodeToString(sum[:6])
}

// keyID is the subject key identifier of pub: the SHA-256 of its
// subjectPublicKey bits, truncated to 160 bits (RFC 7093, method 1).
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	// The bit string is the tail of the SubjectPublicKeyInfo; hashing
	// the whole SPKI is as unique and needs no ASN.1 walk.
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func serial() *big.Int {
	// 128 random bits, positive: RFC 5280 allows up to 20 octets.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(fmt.Sprintf("trust: no randomness: %v", err))
	}
	return n.Add(n, big.NewInt(1))
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// serialHex is the form of serials throughout the package: lower-case
// hex, no leading zeros.
func serialHex(n *big.Int) string { return n.Text(16) }
