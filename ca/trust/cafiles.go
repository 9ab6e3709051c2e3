package trust

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// The files of package ca are how a CA was kept before the trust State
// (a directory, or the keys of the Kubernetes CA Secret), and how it is
// still shown, beside the State, to readers from before it: ca.Load,
// `bulwark ca issue`, agents that read the roots file. FromCAFiles reads
// them as a State; CAFiles writes a State as them. DirStore and the CA
// Secret's store (identity/incluster) both use these two.

// FromCAFiles returns the State of a CA kept as the files of package ca,
// given by name (ca.RootCertFile, ca.CertFile, ca.KeyFile, and
// ca.ChainFile and ca.RootKeyFile when present): their one authority,
// active, of the given origin ("legacy" for material from before this
// package, "init" for a CA just made), at Sequence 1, Revision 0 (not yet
// stored). td zero: whichever trust domain the certificates name. where
// names the material in errors (a directory, a Secret). None of the
// three required files: an error wrapping ca.ErrNoCA; anything else
// unusable: ca.ErrInvalidCA.
func FromCAFiles(where string, files map[string][]byte, td spiffeid.TrustDomain, origin string, now time.Time) (*State, error) {
	have := func(name string) bool { return len(files[name]) > 0 }
	if !have(ca.RootCertFile) && !have(ca.CertFile) && !have(ca.KeyFile) {
		return nil, fmt.Errorf("trust: %s: %w", where, ca.ErrNoCA)
	}
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("trust: %s: %w: "+format, append([]any{where, ca.ErrInvalidCA}, args...)...)
	}
	for _, f := range []string{ca.RootCertFile, ca.CertFile, ca.KeyFile} {
		if !have(f) {
			return nil, invalid("missing %s", f)
		}
	}
	readCerts := func(name string) ([]*x509.Certificate, error) {
		certs, err := pemutil.ParseCerts(files[name])
		if err != nil {
			return nil, invalid("%s: %v", name, err)
		}
		return certs, nil
	}
	readKey := func(name string) (crypto.Signer, error) {
		k, err := pemutil.ParseKey(files[name])
		if err != nil {
			return nil, invalid("%s: %v", name, err)
		}
		return k, nil
	}
	roots, err := readCerts(ca.RootCertFile)
	if err != nil {
		return nil, err
	}
	chain, err := readCerts(ca.CertFile)
	if err != nil {
		return nil, err
	}
	if have(ca.ChainFile) {
		more, err := readCerts(ca.ChainFile)
		if err != nil {
			return nil, err
		}
		for _, c := range more {
			if !c.Equal(chain[0]) && !containsCert(roots, c) {
				chain = append(chain, c)
			}
		}
	}
	key, err := readKey(ca.KeyFile)
	if err != nil {
		return nil, err
	}
	// The root is the anchor the chain ends at. The state keeps one root
	// per authority, so other anchors in the roots file would leave the
	// bundle: refuse rather than drop trust silently.
	top := chain[len(chain)-1]
	var root *x509.Certificate
	for _, r := range roots {
		if top.CheckSignatureFrom(r) == nil {
			root = r
		}
	}
	if root == nil {
		return nil, invalid("%s does not chain to a root of %s", ca.CertFile, ca.RootCertFile)
	}
	if len(roots) > 1 {
		return nil, invalid("%s holds %d roots; the trust state keeps only the root %q that %s chains to, and would drop the others from every bundle: remove them from the file, or keep them in another bundle", ca.RootCertFile, len(roots), root.Subject.CommonName, ca.CertFile)
	}
	var rootKey crypto.Signer
	if have(ca.RootKeyFile) {
		if rootKey, err = readKey(ca.RootKeyFile); err != nil {
			return nil, err
		}
	}
	a, err := newAuthority(root, rootKey, chain, key, origin, now)
	if err != nil {
		return nil, fmt.Errorf("trust: %s: %w: %v", where, ca.ErrInvalidCA, err)
	}
	if td.IsZero() {
		if td, err = a.trustDomain(); err != nil {
			return nil, err
		}
		if td.IsZero() {
			return nil, invalid("its certificates name no trust domain; give it")
		}
	} else if err := namesOnly(td, append([]*x509.Certificate{root}, chain...)...); err != nil {
		return nil, fmt.Errorf("trust: %s: %w", where, err)
	}
	who := "migration"
	if origin != "legacy" {
		who = origin
	}
	return New(td, a, Operation{Who: who, Now: now}), nil
}

// CAFiles returns the files of package ca that show s to readers from
// before the State: ca.RootCertFile with every root of the bundle (so
// they trust what the bundle trusts), and the active authority's
// signing certificate (ca.CertFile), its key (ca.KeyFile), the chain
// above it (ca.ChainFile) and the root's key when held (ca.RootKeyFile).
// A file the view does not have (no chain, no root key) maps to nil:
// remove it. s must have an active authority.
func CAFiles(s *State) (map[string][]byte, error) {
	act := s.Active()
	if act == nil {
		return nil, fmt.Errorf("%w: no authority is active", ErrInvalid)
	}
	key, err := pemutil.EncodeKey(act.Key)
	if err != nil {
		return nil, fmt.Errorf("trust: authority %s: key: %w", act.ID, err)
	}
	files := map[string][]byte{
		ca.RootCertFile: pemutil.EncodeCerts(s.Bundle().Roots),
		ca.CertFile:     pemutil.EncodeCerts(act.Chain[:1]),
		ca.KeyFile:      key,
		ca.ChainFile:    nil,
		ca.RootKeyFile:  nil,
	}
	if len(act.Chain) > 1 {
		files[ca.ChainFile] = pemutil.EncodeCerts(act.Chain[1:])
	}
	if act.RootKey != nil {
		if files[ca.RootKeyFile], err = pemutil.EncodeKey(act.RootKey); err != nil {
			return nil, fmt.Errorf("trust: authority %s: root key: %w", act.ID, err)
		}
	}
	return files, nil
}
