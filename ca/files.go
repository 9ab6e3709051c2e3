package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// Files of a CA directory. A CA made by Init has all but ChainFile; a
// plug-in CA (an organisation's own PKI) has no RootKeyFile, and has a
// ChainFile when there are intermediates between CertFile and the root.
const (
	RootCertFile = "root-cert.pem"  // trust anchors: one or more roots
	RootKeyFile  = "root-key.pem"   // the root's key, only for a CA Bulwark made
	CertFile     = "ca-cert.pem"    // the signing (intermediate) certificate
	KeyFile      = "ca-key.pem"     // its private key
	ChainFile    = "cert-chain.pem" // optional: certificates from CertFile's issuer up to the root
)

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := pemutil.ParseCerts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := pemutil.ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s: %w", path, ErrExists)
		}
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

// checkKey accepts the public keys Envoy and the CA handle well.
func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if n := k.Curve.Params().BitSize; n != 256 && n != 384 {
			return fmt.Errorf("%w: ECDSA on a %d-bit curve (use P-256 or P-384)", ErrKey, n)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA with %d bits (use at least 2048)", ErrKey, k.N.BitLen())
		}
	case ed25519.PublicKey:
		return fmt.Errorf("%w: Ed25519 (Envoy does not serve it; use ECDSA P-256)", ErrKey)
	default:
		return fmt.Errorf("%w: %T", ErrKey, pub)
	}
	return nil
}
