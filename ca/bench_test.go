package ca

import (
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"testing"
	"time"
)

// BenchmarkSignSVID is a full issuance: template, signature, the profile
// check and go-spiffe's chain verification.
func BenchmarkSignSVID(b *testing.B) {
	c, _ := newTestCA(b, time.Now())
	pub := p256(b).Public()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.SignSVID(pub, apiID, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateCertificateBaseline is the floor: x509.CreateCertificate
// alone with the same template and key, no checks.
func BenchmarkCreateCertificateBaseline(b *testing.B) {
	c, _ := newTestCA(b, time.Now())
	pub := p256(b).Public()
	now := time.Now()
	b.ResetTimer()
	for b.Loop() {
		tmpl := &x509.Certificate{
			SerialNumber: mustSerial(), NotBefore: now, NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true, URIs: []*url.URL{apiID.URL()},
		}
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, c.chain[0], pub, c.signer); err != nil {
			b.Fatal(err)
		}
	}
}
