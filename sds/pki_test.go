package sds

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// issuer is a test certificate authority: a root, or an intermediate
// under one.
type issuer struct {
	cert   *x509.Certificate
	key    crypto.Signer
	parent *issuer
}

var serials = big.NewInt(1000)

func nextSerial() *big.Int {
	serials.Add(serials, big.NewInt(1))
	return new(big.Int).Set(serials)
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newRoot makes a self-signed root.
func newRoot(t *testing.T, name string) *issuer {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &issuer{cert: c, key: key}
}

// intermediate makes a CA under i with the given subject common name
// (two intermediates may share one, as a rotation under one root does).
func (i *issuer) intermediate(t *testing.T, name string) *issuer {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.cert, key.Public(), i.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &issuer{cert: c, key: key, parent: i}
}

// leaf is a workload certificate with its chain up to (not including)
// the root.
type leaf struct {
	chain []*x509.Certificate
	key   crypto.Signer
}

func (l leaf) serial() *big.Int { return l.chain[0].SerialNumber }

func (l leaf) tls() tls.Certificate {
	c := tls.Certificate{PrivateKey: l.key, Leaf: l.chain[0]}
	for _, x := range l.chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// leaf signs an X.509-SVID for id, usable for both ends of mTLS.
func (i *issuer) leaf(t *testing.T, id string) leaf {
	t.Helper()
	key := newKey(t)
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: nextSerial(), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.cert, key.Public(), i.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	chain := []*x509.Certificate{c}
	for p := i; p.parent != nil; p = p.parent {
		chain = append(chain, p.cert)
	}
	return leaf{chain: chain, key: key}
}

// crl is a CRL i signs over the given serials, valid for a day.
func (i *issuer) crl(t *testing.T, number int64, revoked ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(24 * time.Hour)}
	for _, s := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, i.cert, i.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func pemEncodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
