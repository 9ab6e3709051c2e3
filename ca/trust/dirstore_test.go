package trust

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

func initDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td, Now: func() time.Time { return t0 }}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// caLoad is what `bulwark ca issue` and a control plane from before the
// trust state do with the directory.
func caLoad(t *testing.T, dir string) *ca.CA {
	t.Helper()
	c, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td, Now: func() time.Time { return t0.Add(time.Hour) }}})
	if err != nil {
		t.Fatalf("ca.Load: %v", err)
	}
	return c
}

func readPEMCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pemutil.ParseCerts(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func TestDirStoreWithoutACAIsErrNoCA(t *testing.T) {
	ctx := context.Background()
	for _, dir := range []string{filepath.Join(t.TempDir(), "missing"), t.TempDir()} {
		_, err := NewDirStore(dir, td).Load(ctx)
		if !errors.Is(err, ca.ErrNoCA) {
			t.Errorf("%s: %v, want ca.ErrNoCA", dir, err)
		}
	}
}

func TestDirStoreMigratesACAInitDirectory(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t)
	roots := readPEMCerts(t, filepath.Join(dir, ca.RootCertFile))
	signing := readPEMCerts(t, filepath.Join(dir, ca.CertFile))[0]
	st := NewDirStore(dir, td)
	s, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := s.Active()
	if len(s.Authorities) != 1 || a.Origin != "legacy" || s.Sequence != 1 || s.Revision != 0 || a.RootKey == nil || a.PreparedSeq != 1 {
		t.Fatalf("migrated: %+v, authority %+v", s, a)
	}
	if !a.Root.Equal(roots[0]) || !a.Signing().Equal(signing) || a.ID != authorityID(signing) {
		t.Error("the migrated authority is not the directory's")
	}
	if e := lastEvent(s); e.Action != "migrate" {
		t.Errorf("event %+v", e)
	}
	if _, err := os.Stat(st.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Error("Load wrote the state")
	}
	if err := st.Save(ctx, s); err != nil {
		t.Fatal(err)
	}
	if s.Revision != 1 {
		t.Errorf("revision %d after the first save", s.Revision)
	}
	fi, err := os.Stat(st.Path())
	if err != nil || fi.Mode().Perm() != 0o600 || st.Path() != filepath.Join(dir, StateFile) {
		t.Fatalf("state file: %v %v", fi, err)
	}
	again, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision != 1 || again.Active().ID != a.ID || again.Sequence != 1 {
		t.Errorf("reloaded: revision %d, active %s", again.Revision, again.Active().ID)
	}
	// The files of package ca are as they were.
	c := caLoad(t, dir)
	if len(c.Roots()) != 1 || !c.Roots()[0].Equal(roots[0]) {
		t.Error("ca.Load sees other roots")
	}
	if _, err := os.Stat(filepath.Join(dir, ca.RootKeyFile)); err != nil {
		t.Error("the root key file is gone")
	}
}

func TestANewStateDoesNotReplaceALegacyCA(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t)
	before, _ := os.ReadFile(filepath.Join(dir, ca.CertFile))
	err := NewDirStore(dir, td).Save(ctx, newState(t))
	wantErr(t, err, ErrConflict, "holds a CA that this state does not")
	if !errors.Is(err, ca.ErrExists) {
		t.Error("not ca.ErrExists")
	}
	if after, _ := os.ReadFile(filepath.Join(dir, ca.CertFile)); string(after) != string(before) {
		t.Error("the CA was replaced")
	}
	// Into an empty directory, a new state goes (bulwark ca init).
	empty := filepath.Join(t.TempDir(), "new")
	s := newState(t)
	st := NewDirStore(empty, td)
	if err := st.Save(ctx, s); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("directory: %v %v", fi, err)
	}
	caLoad(t, empty)
}

func TestDirStoreCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t)
	st := NewDirStore(dir, td)
	// Two migrations race: one wins.
	a, _ := st.Load(ctx)
	b, _ := NewDirStore(dir, td).Load(ctx)
	if err := st.Save(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, b); !errors.Is(err, ErrConflict) {
		t.Fatalf("second migration saved: %v", err)
	}
	// Two writers load the same revision; the second to save loses.
	x, _ := st.Load(ctx)
	y, _ := st.Load(ctx)
	prepared(t, x, "intermediate", at(0))
	if err := Revoke(y, Revocation{Kind: ByWorkload, Value: "default/a", Reason: "x"}, at(0)); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, x); err != nil {
		t.Fatal(err)
	}
	err := st.Save(ctx, y)
	wantErr(t, err, ErrConflict, "revision 2", "loaded at 1")
	if y.Revision != 1 {
		t.Error("a failed save bumped the revision")
	}
	// Load again and redo the step: it goes through, and keeps both.
	y, _ = st.Load(ctx)
	if err := Revoke(y, Revocation{Kind: ByWorkload, Value: "default/a", Reason: "x"}, at(0)); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, y); err != nil {
		t.Fatal(err)
	}
	final, _ := st.Load(ctx)
	if len(final.Authorities) != 2 || len(final.Revocations) != 1 || final.Revision != 3 {
		t.Errorf("final: %d authorities, %d revocations, revision %d", len(final.Authorities), len(final.Revocations), final.Revision)
	}
	// A cancelled wait for the lock is an error, not a save.
	unlock, err := st.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := st.Save(cctx, final); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("save while locked: %v", err)
	}
	unlock()
	if err := st.Save(ctx, final); err != nil {
		t.Fatal(err)
	}
}

func TestTheCAFilesFollowARotation(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t)
	st := NewDirStore(dir, td)
	s, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := s.Active()
	if err := StartRotation(s, "root", at(0)); err != nil {
		t.Fatal(err)
	}
	step := func() {
		t.Helper()
		if _, err := Advance(s, Evidence{}, at(time.Minute), mint); err != nil {
			t.Fatal(err)
		}
		if err := st.Save(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	step() // prepare
	if roots := readPEMCerts(t, filepath.Join(dir, ca.RootCertFile)); len(roots) != 2 {
		t.Fatalf("root-cert.pem holds %d roots while the new one is prepared", len(roots))
	}
	if c := caLoad(t, dir); !readPEMCerts(t, filepath.Join(dir, ca.CertFile))[0].Equal(old.Signing()) || len(c.Roots()) != 2 {
		t.Error("the CA files do not show the old authority signing, under both roots")
	}
	step() // activate
	target := s.Active()
	c := caLoad(t, dir)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := c.SignSVID(key.Public(), spiffeid.RequireFromPath(td, "/ns/default/sa/a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if s.IssuerOf(chain[0]) != target.ID {
		t.Error("ca.Load signs with another authority than the active one")
	}
	for s.Rotation != nil {
		step()
	}
	roots := readPEMCerts(t, filepath.Join(dir, ca.RootCertFile))
	if len(roots) != 1 || !roots[0].Equal(target.Root) {
		t.Error("root-cert.pem does not hold just the new root")
	}
	rootKey, err := os.ReadFile(filepath.Join(dir, ca.RootKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if k, err := pemutil.ParseKey(rootKey); err != nil || !publicKeysEqual(k.Public(), target.Root.PublicKey) {
		t.Error("root-key.pem is not the new root's key")
	}
	if _, err := os.Stat(filepath.Join(dir, ca.ChainFile)); !errors.Is(err, os.ErrNotExist) {
		t.Error("a cert-chain.pem for a chain of one")
	}
	if fi, _ := os.Stat(filepath.Join(dir, ca.KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("ca-key.pem mode %v", fi.Mode().Perm())
	}
	caLoad(t, dir)

	// A handed-in authority: Bulwark holds no root key for it.
	s.Active().RootKey = nil
	cert, hkey, err := MintIntermediate(td, target.Root, target.RootKey, 24*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := HandIn(s, nil, []*x509.Certificate{cert}, hkey, at(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := Activate(s, a.ID, Evidence{}, at(0)); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ca.RootKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Error("root-key.pem stays though the active authority's root key is not held")
	}
	caLoad(t, dir)
}

func TestDirStoreMigratesAPlugInCAWithAChain(t *testing.T) {
	ctx := context.Background()
	root, rootKey, _ := MintRoot(td, 48*time.Hour, t0)
	mid, midKey := issueCA(t, root, rootKey, func(c *x509.Certificate) {})
	signing, key := issueCA(t, mid, midKey, func(c *x509.Certificate) {})
	dir := t.TempDir()
	keyPEM, _ := pemutil.EncodeKey(key)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(ca.RootCertFile, pemutil.EncodeCerts([]*x509.Certificate{root}))
	write(ca.CertFile, pemutil.EncodeCerts([]*x509.Certificate{signing}))
	write(ca.ChainFile, pemutil.EncodeCerts([]*x509.Certificate{mid, root}))
	write(ca.KeyFile, keyPEM)
	st := NewDirStore(dir, spiffeid.TrustDomain{})
	s, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := s.Active()
	if s.TrustDomain != td || a.RootKey != nil || len(a.Chain) != 2 || !a.Chain[1].Equal(mid) {
		t.Fatalf("migrated %+v", a)
	}
	if err := StartRotation(s, "intermediate", at(0)); !errors.Is(err, ErrIllegal) {
		t.Errorf("an intermediate rotation without the root key: %v", err)
	}
	if err := st.Save(ctx, s); err != nil {
		t.Fatal(err)
	}
	if chain := readPEMCerts(t, filepath.Join(dir, ca.ChainFile)); len(chain) != 1 || !chain[0].Equal(mid) {
		t.Error("cert-chain.pem does not hold the intermediate between the signing certificate and the root")
	}
	caLoad(t, dir)
}

func TestDirStoreRefusesWhatItWouldDrop(t *testing.T) {
	ctx := context.Background()
	dir := initDir(t)
	other, _, _ := MintRoot(td, time.Hour, t0)
	roots := append(readPEMCerts(t, filepath.Join(dir, ca.RootCertFile)), other)
	if err := os.WriteFile(filepath.Join(dir, ca.RootCertFile), pemutil.EncodeCerts(roots), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := NewDirStore(dir, td).Load(ctx)
	wantErr(t, err, ca.ErrInvalidCA, "holds 2 roots")

	dir = initDir(t)
	_, err = NewDirStore(dir, spiffeid.RequireTrustDomainFromString("other.org")).Load(ctx)
	wantErr(t, err, ErrInvalid, "other.org")
}
