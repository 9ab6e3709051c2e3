package pemutil_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

func selfSigned(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<31, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertsRoundTripInOrder(t *testing.T) {
	a, b := selfSigned(t, "a"), selfSigned(t, "b")
	// Other blocks between certificates (a key, say) are skipped.
	data := append(pemutil.EncodeCerts([]*x509.Certificate{a}), pem.EncodeToMemory(&pem.Block{Type: "COMMENT", Bytes: []byte("x")})...)
	data = append(data, pemutil.EncodeCerts([]*x509.Certificate{b})...)
	got, err := pemutil.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(a) || !got[1].Equal(b) {
		t.Fatalf("got %d certificates, want a then b", len(got))
	}
	if pemutil.EncodeCerts(nil) != nil {
		t.Error("no certificates should encode to nil")
	}
}

func TestParseCertsErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{name: "empty", data: nil, want: pemutil.ErrNoCertificate},
		{name: "not PEM", data: []byte("hello"), want: pemutil.ErrNoCertificate},
		{name: "only a key", data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), want: pemutil.ErrNoCertificate},
		{name: "broken certificate", data: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), msg: "x509"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pemutil.ParseCerts(tc.data)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want it to mention %q", err, tc.msg)
			}
		})
	}
}

func TestKeysRoundTrip(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		data func() []byte
	}{
		{"pkcs8 ecdsa", ec, func() []byte { b, _ := pemutil.EncodeKey(ec); return b }},
		{"pkcs8 rsa", rsaKey, func() []byte { b, _ := pemutil.EncodeKey(rsaKey); return b }},
		{"sec1 ecdsa", ec, func() []byte { return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}) }},
		{"pkcs1 rsa", rsaKey, func() []byte {
			return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pemutil.ParseKey(tc.data())
			if err != nil {
				t.Fatal(err)
			}
			type equaler interface{ Equal(crypto.PublicKey) bool }
			if !got.Public().(equaler).Equal(tc.key.Public()) {
				t.Error("parsed key is not the encoded one")
			}
		})
	}
}

func TestParseKeyErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		msg  string
	}{
		{"empty", nil, "no PEM block"},
		{"a certificate", pemutil.EncodeCerts([]*x509.Certificate{selfSigned(t, "c")}), `"CERTIFICATE" is not a private key`},
		{"broken key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}), "asn1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pemutil.ParseKey(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want an error mentioning %q", err, tc.msg)
			}
		})
	}
}
