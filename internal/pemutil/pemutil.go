package pemutil

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// PEM block types.
const (
	certificateType = "CERTIFICATE"
	pkcs8KeyType    = "PRIVATE KEY"
	ecKeyType       = "EC PRIVATE KEY"
	pkcs1KeyType    = "RSA PRIVATE KEY"
)

// ErrNoCertificate means the data held no CERTIFICATE block.
var ErrNoCertificate = errors.New("no PEM certificate")

// ErrNoBlock means the data held no PEM block at all.
var ErrNoBlock = errors.New("no PEM block")

// EncodeCerts returns certs as concatenated CERTIFICATE blocks, in the
// order given. A nil or empty slice gives nil.
func EncodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: certificateType, Bytes: c.Raw})...)
	}
	return out
}

// EncodeKey returns key as a PKCS#8 PRIVATE KEY block.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pkcs8KeyType, Bytes: der}), nil
}

// ParseCerts returns every CERTIFICATE block in data, in order, skipping
// blocks of other types. Data with no certificate is ErrNoCertificate; a
// block that does not parse is an error, not skipped.
func ParseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != certificateType {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, ErrNoCertificate
	}
	return out, nil
}

// ParseKey returns the private key in the first PEM block of data:
// PKCS#8, SEC 1 (EC) or PKCS#1 (RSA). The key must be able to sign.
func ParseKey(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, ErrNoBlock
	}
	var (
		key any
		err error
	)
	switch b.Type {
	case pkcs8KeyType:
		key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case ecKeyType:
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case pkcs1KeyType:
		key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", b.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T cannot sign", key)
	}
	return s, nil
}
