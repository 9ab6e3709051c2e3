package trust

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// Files of a CA directory that the trust state adds to those of package
// ca.
const (
	StateFile = "trust-state.json"
	LockFile  = ".trust.lock"
)

// DirStore keeps a State in a CA directory: StateFile, written atomically
// under an flock on LockFile, and the files of package ca (ca.RootCertFile
// and the others) rewritten at every save as a view of the active
// authority, so that ca.Load, `bulwark ca issue` and agents that read the
// roots file keep working. It is safe for concurrent use by goroutines
// and processes.
type DirStore struct {
	dir string
	td  spiffeid.TrustDomain
	// now is the clock of the migration of a legacy directory.
	now func() time.Time
}

var _ Store = (*DirStore)(nil)

// NewDirStore returns the store of the CA directory dir, of trust domain
// td (zero: whichever the directory holds).
func NewDirStore(dir string, td spiffeid.TrustDomain) *DirStore {
	return &DirStore{dir: dir, td: td, now: time.Now}
}

// Path returns the state file's path (which a watcher polls).
func (d *DirStore) Path() string { return filepath.Join(d.dir, StateFile) }

// Load returns the stored state. A directory with only the files of a CA
// from before this package is returned as their one active authority
// (Origin "legacy", Sequence 1, Revision 0: not yet saved); the first
// Save stores it. A missing directory, or one without CA material, is an
// error wrapping ca.ErrNoCA.
func (d *DirStore) Load(ctx context.Context) (*State, error) {
	if _, err := os.Stat(d.dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("trust: %s: %w (create it with 'bulwark ca init --dir %s')", d.dir, ca.ErrNoCA, d.dir)
	} else if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	data, err := os.ReadFile(d.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return d.migrate()
	}
	if err != nil {
		return nil, fmt.Errorf("trust: %w", err)
	}
	s, err := Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Path(), err)
	}
	if !d.td.IsZero() && s.TrustDomain != d.td {
		return nil, fmt.Errorf("trust: %s: the state is of trust domain %s, not %s", d.Path(), s.TrustDomain, d.td)
	}
	return s, nil
}

// migrate reads the files of package ca as one active authority.
func (d *DirStore) migrate() (*State, error) {
	path := func(name string) string { return filepath.Join(d.dir, name) }
	have := func(name string) bool { _, err := os.Stat(path(name)); return err == nil }
	if !have(ca.RootCertFile) && !have(ca.CertFile) && !have(ca.KeyFile) {
		return nil, fmt.Errorf("trust: %s: %w (create it with 'bulwark ca init --dir %s')", d.dir, ca.ErrNoCA, d.dir)
	}
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("trust: %s: %w: "+format, append([]any{d.dir, ca.ErrInvalidCA}, args...)...)
	}
	for _, f := range []string{ca.RootCertFile, ca.CertFile, ca.KeyFile} {
		if !have(f) {
			return nil, invalid("missing %s", f)
		}
	}
	readCerts := func(name string) ([]*x509.Certificate, error) {
		data, err := os.ReadFile(path(name))
		if err != nil {
			return nil, invalid("%v", err)
		}
		certs, err := pemutil.ParseCerts(data)
		if err != nil {
			return nil, invalid("%s: %v", name, err)
		}
		return certs, nil
	}
	readKey := func(name string) (crypto.Signer, error) {
		data, err := os.ReadFile(path(name))
		if err != nil {
			return nil, invalid("%v", err)
		}
		k, err := pemutil.ParseKey(data)
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
	now := d.now()
	a, err := newAuthority(root, rootKey, chain, key, "legacy", now)
	if err != nil {
		return nil, fmt.Errorf("trust: %s: %w: %v", d.dir, ca.ErrInvalidCA, err)
	}
	td := d.td
	if td.IsZero() {
		if td, err = a.trustDomain(); err != nil {
			return nil, err
		}
		if td.IsZero() {
			return nil, invalid("its certificates name no trust domain; give it")
		}
	} else if err := namesOnly(td, append([]*x509.Certificate{root}, chain...)...); err != nil {
		return nil, fmt.Errorf("trust: %s: %w", d.dir, err)
	}
	return New(td, a, Operation{Who: "migration", Now: now}), nil
}

// Save stores s if the stored revision is still s.Revision, and bumps
// s.Revision; ErrConflict otherwise. The state file is replaced
// atomically (a crash leaves the old one or the new one); the files of
// package ca are rewritten after it, as a view of the active authority.
func (d *DirStore) Save(ctx context.Context, s *State) error {
	if s.Active() == nil {
		return fmt.Errorf("%w: save: no authority is active", ErrInvalid)
	}
	if !d.td.IsZero() && s.TrustDomain != d.td {
		return fmt.Errorf("%w: save: the state is of trust domain %s, the store of %s", ErrInvalid, s.TrustDomain, d.td)
	}
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	unlock, err := d.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	stored, err := d.storedRevision()
	if err != nil {
		return err
	}
	if stored != s.Revision {
		return fmt.Errorf("%w (%s is at revision %d, this state was loaded at %d)", ErrConflict, d.Path(), stored, s.Revision)
	}
	if stored == 0 {
		if err := d.checkFirstSave(s); err != nil {
			return err
		}
	}
	next := *s
	next.Revision = s.Revision + 1
	data, err := Marshal(&next)
	if err != nil {
		return err
	}
	if err := writeAtomic(d.dir, StateFile, data, 0o600); err != nil {
		return fmt.Errorf("trust: save %s: %w", d.Path(), err)
	}
	s.Revision = next.Revision
	if err := d.writeLegacy(s); err != nil {
		return fmt.Errorf("trust: saved %s, but the CA files: %w", d.Path(), err)
	}
	return nil
}

// checkFirstSave refuses to store a state over a CA directory from
// before the trust state unless the state holds that CA (it was migrated
// from it): a state made anew (bulwark ca init) must not replace a
// running mesh's CA, which would cut every workload off.
func (d *DirStore) checkFirstSave(s *State) error {
	data, err := os.ReadFile(filepath.Join(d.dir, ca.CertFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("trust: %w", err)
	}
	certs, err := pemutil.ParseCerts(data)
	if err != nil {
		return fmt.Errorf("trust: %s: %w: %v", filepath.Join(d.dir, ca.CertFile), ca.ErrInvalidCA, err)
	}
	for _, a := range s.Authorities {
		if a.Signing().Equal(certs[0]) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s holds a CA that this state does not (load the directory to migrate it, instead of replacing it): %w",
		ErrConflict, d.dir, ca.ErrExists)
}

// storedRevision is the revision of the state file; 0 when there is none
// (a legacy directory, or a new one).
func (d *DirStore) storedRevision() (uint64, error) {
	data, err := os.ReadFile(d.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("trust: %w", err)
	}
	var head struct {
		Revision uint64 `json:"revision"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return 0, fmt.Errorf("trust: %s: %w", d.Path(), err)
	}
	return head.Revision, nil
}

// lock takes the directory's flock, waiting for ctx.
func (d *DirStore) lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(filepath.Join(d.dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("trust: lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("trust: lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("trust: lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// writeLegacy writes the files of package ca for the active authority,
// each only if it changed (agents watch the roots file).
func (d *DirStore) writeLegacy(s *State) error {
	act := s.Active()
	key, err := pemutil.EncodeKey(act.Key)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte // nil: remove
		mode os.FileMode
	}{
		{ca.RootCertFile, pemutil.EncodeCerts(s.Bundle().Roots), 0o644},
		{ca.CertFile, pemutil.EncodeCerts(act.Chain[:1]), 0o644},
		{ca.KeyFile, key, 0o600},
		{ca.ChainFile, pemutil.EncodeCerts(act.Chain[1:]), 0o644},
		{ca.RootKeyFile, nil, 0o600},
	}
	if act.RootKey != nil {
		if files[4].data, err = pemutil.EncodeKey(act.RootKey); err != nil {
			return err
		}
	}
	// The key before the certificate, so that a reader between the two
	// renames sees a new key with an old certificate at worst, which
	// ca.Load refuses (and retries), never a certificate it cannot use
	// silently.
	for _, f := range []int{2, 1, 3, 4, 0} {
		file := files[f]
		p := filepath.Join(d.dir, file.name)
		if len(file.data) == 0 {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, file.data) {
			continue
		}
		if err := writeAtomic(d.dir, file.name, file.data, file.mode); err != nil {
			return err
		}
	}
	return nil
}

// writeAtomic replaces dir/name with data: a temporary file, synced,
// renamed over it, and the directory synced, so that a crash leaves the
// old content or the new, never a mix.
func writeAtomic(dir, name string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, it no longer exists
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	dh, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer dh.Close()
	return dh.Sync()
}
