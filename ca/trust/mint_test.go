package trust

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
)

func TestMintedCertificatesFollowTheProfileOfInit(t *testing.T) {
	root, rootKey, err := MintRoot(td, 48*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := MintIntermediate(td, root, rootKey, 72*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*x509.Certificate{root, cert} {
		if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
			t.Errorf("%s: not a CA certificate with certSign and cRLSign", c.Subject.CommonName)
		}
		if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
			t.Errorf("%s: URI SANs %v, want the trust domain", c.Subject.CommonName, c.URIs)
		}
		if got := c.NotBefore; !got.Equal(t0.Add(-30 * time.Second)) {
			t.Errorf("%s: NotBefore %s, want 30s before now", c.Subject.CommonName, got)
		}
		if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s: key %T, want ECDSA P-256", c.Subject.CommonName, c.PublicKey)
		}
		if !strings.Contains(c.Subject.CommonName, fmt.Sprintf("%x", c.SubjectKeyId[:4])) {
			t.Errorf("%s: the subject does not name the generation (%x)", c.Subject.CommonName, c.SubjectKeyId[:4])
		}
	}
	if !cert.MaxPathLenZero || cert.MaxPathLen != 0 {
		t.Error("the intermediate may have intermediates under it")
	}
	if !cert.NotAfter.Equal(root.NotAfter) {
		t.Errorf("intermediate NotAfter %s, want capped at the root's %s", cert.NotAfter, root.NotAfter)
	}
	if err := cert.CheckSignatureFrom(root); err != nil {
		t.Error(err)
	}
	root2, _, err := MintRoot(td, 48*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	if root2.Subject.CommonName == root.Subject.CommonName {
		t.Error("two roots have the same subject")
	}
}

func TestMintIntermediateRefusesAWrongKeyOrForeignRoot(t *testing.T) {
	root, _, _ := MintRoot(td, time.Hour, t0)
	_, otherKey, _ := MintRoot(td, time.Hour, t0)
	if _, _, err := MintIntermediate(td, root, otherKey, time.Hour, t0); err == nil {
		t.Error("an intermediate signed with a key that is not the root's")
	}
	other := spiffeid.RequireTrustDomainFromString("other.org")
	root2, key2, _ := MintRoot(other, time.Hour, t0)
	wantErr(t, func() error { _, _, err := MintIntermediate(td, root2, key2, time.Hour, t0); return err }(), ErrInvalid, "other.org")
}

func TestNewAuthorityChecksTheMaterialFitsTogether(t *testing.T) {
	root, rootKey, _ := MintRoot(td, 24*time.Hour, t0)
	cert, key, _ := MintIntermediate(td, root, rootKey, 24*time.Hour, t0)
	root2, rootKey2, _ := MintRoot(td, 24*time.Hour, t0)
	cert2, key2, _ := MintIntermediate(td, root2, rootKey2, 24*time.Hour, t0)
	rootO, rootKeyO, _ := MintRoot(spiffeid.RequireTrustDomainFromString("other.org"), 24*time.Hour, t0)
	// An intermediate of td under other.org's root: made by hand, since
	// MintIntermediate refuses it.
	mixed, mixedKey := issueCA(t, rootO, rootKeyO, func(c *x509.Certificate) {})
	expired, expiredKey, _ := MintIntermediate(td, root, rootKey, time.Minute, t0.Add(-time.Hour))
	noCRLSign, noCRLSignKey := issueCA(t, root, rootKey, func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageCertSign })
	notCA, notCAKey := issueCA(t, root, rootKey, func(c *x509.Certificate) { c.IsCA = false })

	for _, tc := range []struct {
		name    string
		root    *x509.Certificate
		rootKey crypto.Signer
		chain   *x509.Certificate
		key     crypto.Signer
		want    string
	}{
		{name: "ok", root: root, rootKey: rootKey, chain: cert, key: key},
		{name: "ok without the root key", root: root, chain: cert, key: key},
		{name: "key of another certificate", root: root, rootKey: rootKey, chain: cert, key: key2, want: "key: does not belong"},
		{name: "root key of another root", root: root, rootKey: rootKey2, chain: cert, key: key, want: "root key: does not belong"},
		{name: "chain to another root", root: root, chain: cert2, key: key2, want: "is not signed by"},
		{name: "two trust domains", root: rootO, rootKey: rootKeyO, chain: mixed, key: mixedKey, want: "two trust domains"},
		{name: "expired", root: root, chain: expired, key: expiredKey, want: "does not verify"},
		{name: "no cRLSign", root: root, chain: noCRLSign, key: noCRLSignKey, want: "cRLSign"},
		{name: "not a CA", root: root, chain: notCA, key: notCAKey, want: "not a CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewAuthority(tc.root, tc.rootKey, []*x509.Certificate{tc.chain}, tc.key, "test")
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if a.ID != authorityID(tc.chain) || len(a.ID) != 12 || a.Phase != "" || a.Origin != "test" {
					t.Errorf("ID %q phase %q origin %q", a.ID, a.Phase, a.Origin)
				}
				return
			}
			wantErr(t, err, ErrInvalid, tc.want)
		})
	}
}

// issueCA makes a CA certificate of td under parent, changed by edit.
func issueCA(t testing.TB, parent *x509.Certificate, parentKey crypto.Signer, edit func(*x509.Certificate)) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "hand-made CA"},
		NotBefore: t0.Add(-time.Minute), NotAfter: t0.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		URIs: []*url.URL{td.ID().URL()},
	}
	edit(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func TestIDPrefixesSelectAnAuthority(t *testing.T) {
	s := newState(t)
	for range 40 {
		prepared(t, s, "intermediate", at(0))
	}
	a := s.Authorities[3]
	if got := s.Get(a.ID[:8]); got != a {
		t.Errorf("Get(%s) = %v, want %s", a.ID[:8], got, a.ID)
	}
	if got := s.Get(strings.ToUpper(a.ID)); got != a {
		t.Error("an upper-case ID is not found")
	}
	if s.Get(a.ID[:3]) != nil {
		t.Error("3 hex digits select an authority")
	}
	if s.Get("zzzz") != nil || s.Get("") != nil {
		t.Error("not hex selects an authority")
	}
	// Two IDs that share their first 4 digits (forged: real ones rarely
	// do) make that prefix ambiguous.
	s.Authorities[5].ID = a.ID[:4] + "000000ff"
	_, err := s.lookup(a.ID[:4])
	wantErr(t, err, ErrAmbiguous, a.ID, s.Authorities[5].ID)
	if s.Get(a.ID[:4]) != nil {
		t.Error("an ambiguous prefix selects an authority")
	}
	_, err = s.lookup("abcdabcdabcd")
	wantErr(t, err, ErrNotFound)
}

func TestIssuerOfFindsTheSigningAuthority(t *testing.T) {
	s := newState(t)
	old := s.Active()
	leafOld := issue(t, s, "a", t0)
	next := prepared(t, s, "intermediate", at(0))
	if err := Activate(s, next.ID, Evidence{}, at(time.Second)); err != nil {
		t.Fatal(err)
	}
	leafNew := issue(t, s, "b", t0)
	if got := s.IssuerOf(leafOld[0]); got != old.ID {
		t.Errorf("old leaf: issuer %q, want %s", got, old.ID)
	}
	if got := s.IssuerOf(leafNew[0]); got != next.ID {
		t.Errorf("new leaf: issuer %q, want %s", got, next.ID)
	}
	// Same key identifier, other signature: not ours.
	foreign := newState(t)
	leafForeign := issue(t, foreign, "c", t0)
	leafForeign[0].AuthorityKeyId = old.Signing().SubjectKeyId
	if got := s.IssuerOf(leafForeign[0]); got != "" {
		t.Errorf("a foreign leaf: issuer %q", got)
	}
	if s.IssuerOf(nil) != "" {
		t.Error("nil has an issuer")
	}
}

func TestCAIsTheActiveAuthority(t *testing.T) {
	s := newState(t)
	next := prepared(t, s, "root", at(0))
	c, err := s.CA(ca.Config{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Roots()) != 2 {
		t.Errorf("the CA hands out %d roots, want both of the bundle", len(c.Roots()))
	}
	chain := issue(t, s, "a", t0)
	if s.IssuerOf(chain[0]) != s.Active().ID || s.IssuerOf(chain[0]) == next.ID {
		t.Error("the CA does not sign with the active authority")
	}
}
