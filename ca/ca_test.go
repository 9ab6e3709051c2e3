package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	apiID   = spiffeid.RequireFromString("spiffe://example.org/ns/prod/sa/api")
	t0      = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	fixedAt = func(t time.Time) func() time.Time { return func() time.Time { return t } }
)

func newTestCA(t testing.TB, now time.Time) (*CA, string) {
	t.Helper()
	dir := t.TempDir()
	if err := Init(InitConfig{Dir: dir, TrustDomain: td, Now: fixedAt(now)}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(now)}})
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestIssuedLeafFollowsTheProfile(t *testing.T) {
	c, _ := newTestCA(t, t0)
	chain, err := c.SignSVID(p256(t).Public(), apiID, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != apiID.String() {
		t.Errorf("URIs = %v", leaf.URIs)
	}
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("IsCA=%v KeyUsage=%v", leaf.IsCA, leaf.KeyUsage)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 24*time.Hour {
		t.Errorf("default lifetime = %s, want 24h", got)
	}
	if err := CheckSVID(chain, c.Roots(), td, t0); err != nil {
		t.Errorf("CheckSVID on an issued leaf: %v", err)
	}
	if len(chain) != 2 || !chain[1].IsCA {
		t.Errorf("chain has %d certificates, want leaf + intermediate", len(chain))
	}
}

func TestSignSVIDRules(t *testing.T) {
	c, _ := newTestCA(t, t0)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for _, tc := range []struct {
		name string
		pub  crypto.PublicKey
		id   spiffeid.ID
		ttl  time.Duration
		err  error
	}{
		{"foreign trust domain", p256(t).Public(), spiffeid.RequireFromString("spiffe://evil.org/ns/prod/sa/api"), 0, ErrForeignID},
		{"weak RSA", rsaKey.Public(), apiID, 0, ErrKey},
		{"Ed25519", edPub, apiID, 0, ErrKey},
		{"P-224", p224.Public(), apiID, 0, ErrKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.SignSVID(tc.pub, tc.id, tc.ttl)
			if !errors.Is(err, tc.err) {
				t.Errorf("SignSVID = %v, want %v", err, tc.err)
			}
		})
	}

	t.Run("lifetime above the cap is shortened", func(t *testing.T) {
		chain, err := c.SignSVID(p256(t).Public(), apiID, 30*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != MaxLeafTTL {
			t.Errorf("lifetime = %s, want the cap %s", got, MaxLeafTTL)
		}
	})
	t.Run("short lifetime is kept", func(t *testing.T) {
		chain, err := c.SignSVID(p256(t).Public(), apiID, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != 2*time.Minute {
			t.Errorf("lifetime = %s, want 2m", got)
		}
	})
	t.Run("never past the intermediate", func(t *testing.T) {
		late := t0.Add(DefaultIntermediateTTL - time.Hour)
		c2, err := New(Config{TrustDomain: td, Roots: c.roots, Chain: c.chain, Signer: c.signer, Now: fixedAt(late)})
		if err != nil {
			t.Fatal(err)
		}
		chain, err := c2.SignSVID(p256(t).Public(), apiID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !chain[0].NotAfter.Equal(c.chain[0].NotAfter) {
			t.Errorf("leaf valid until %s, intermediate until %s", chain[0].NotAfter, c.chain[0].NotAfter)
		}
	})
	t.Run("a cap above 24h needs AllowLongLived", func(t *testing.T) {
		_, err := New(Config{TrustDomain: td, Roots: c.roots, Chain: c.chain, Signer: c.signer, MaxTTL: 48 * time.Hour})
		if err == nil || !strings.Contains(err.Error(), "AllowLongLived") {
			t.Errorf("New = %v", err)
		}
		c3, err := New(Config{TrustDomain: td, Roots: c.roots, Chain: c.chain, Signer: c.signer, MaxTTL: 48 * time.Hour, AllowLongLived: true, Now: fixedAt(t0)})
		if err != nil {
			t.Fatal(err)
		}
		chain, _ := c3.SignSVID(p256(t).Public(), apiID, 48*time.Hour)
		if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != 48*time.Hour {
			t.Errorf("lifetime = %s, want 48h", got)
		}
	})
}

// forge signs a leaf from a template that breaks one rule, with the test
// CA's own intermediate, so only the rule under test is wrong.
func forge(t *testing.T, c *CA, mutate func(*x509.Certificate)) []*x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		NotBefore:             t0.Add(-time.Minute),
		NotAfter:              t0.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{apiID.URL()},
	}
	mutate(tmpl)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.chain[0], p256(t).Public(), c.signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return append([]*x509.Certificate{leaf}, c.chain...)
}

// TestCheckSVIDRejectsEachBrokenRule: every rule of the profile, each
// with a certificate that breaks it and nothing else.
func TestCheckSVIDRejectsEachBrokenRule(t *testing.T) {
	c, _ := newTestCA(t, t0)
	other, _ := newTestCA(t, t0)
	for _, tc := range []struct {
		name   string
		mutate func(*x509.Certificate)
		chain  func([]*x509.Certificate) []*x509.Certificate
		want   string
	}{
		{name: "no URI SAN", mutate: func(c *x509.Certificate) { c.URIs = nil }, want: "0 URI SANs"},
		{name: "two URI SANs", mutate: func(c *x509.Certificate) {
			c.URIs = append(c.URIs, spiffeid.RequireFromString("spiffe://example.org/ns/prod/sa/db").URL())
		}, want: "2 URI SANs"},
		{name: "not a SPIFFE URI", mutate: func(c *x509.Certificate) { c.URIs = []*url.URL{{Scheme: "https", Host: "example.org"}} }, want: "not a SPIFFE ID"},
		{name: "another trust domain", mutate: func(c *x509.Certificate) {
			c.URIs = []*url.URL{spiffeid.RequireFromString("spiffe://evil.org/ns/prod/sa/api").URL()}
		}, want: "not in trust domain"},
		{name: "trust domain ID", mutate: func(c *x509.Certificate) { c.URIs = []*url.URL{td.ID().URL()} }, want: "has no path"},
		{name: "DNS SAN", mutate: func(c *x509.Certificate) { c.DNSNames = []string{"api.prod"} }, want: "SANs other than the URI"},
		{name: "IP SAN", mutate: func(c *x509.Certificate) { c.IPAddresses = []net.IP{net.ParseIP("10.0.0.1")} }, want: "SANs other than the URI"},
		{name: "no basic constraints", mutate: func(c *x509.Certificate) { c.BasicConstraintsValid = false }, want: "no basic constraints"},
		{name: "CA true", mutate: func(c *x509.Certificate) { c.IsCA = true }, want: "CA:true"},
		{name: "no key usage", mutate: func(c *x509.Certificate) { c.KeyUsage = 0 }, want: "key usage is missing"},
		{name: "no digitalSignature", mutate: func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyAgreement }, want: "lacks digitalSignature"},
		{name: "keyCertSign", mutate: func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, want: "keyCertSign or cRLSign"},
		{name: "cRLSign", mutate: func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }, want: "keyCertSign or cRLSign"},
		{name: "no clientAuth", mutate: func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} }, want: "lacks serverAuth or clientAuth"},
		{name: "no serverAuth", mutate: func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth} }, want: "lacks serverAuth or clientAuth"},
		{name: "outlives the intermediate", mutate: func(c *x509.Certificate) { c.NotAfter = t0.Add(DefaultIntermediateTTL + time.Hour) }, want: "past its issuer"},
		{name: "expired", mutate: func(c *x509.Certificate) { c.NotBefore, c.NotAfter = t0.Add(-2*time.Hour), t0.Add(-time.Hour) }, want: "not at"},
		{name: "not yet valid", mutate: func(c *x509.Certificate) { c.NotBefore = t0.Add(time.Hour); c.NotAfter = t0.Add(2 * time.Hour) }, want: "not at"},
		{name: "signed by another CA", mutate: func(*x509.Certificate) {}, chain: func(ch []*x509.Certificate) []*x509.Certificate {
			return append([]*x509.Certificate{ch[0]}, other.chain...)
		}, want: "does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain := forge(t, c, tc.mutate)
			if tc.chain != nil {
				chain = tc.chain(chain)
			}
			err := CheckSVID(chain, c.Roots(), td, t0)
			if !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CheckSVID = %v, want ErrProfile mentioning %q", err, tc.want)
			}
		})
	}
	// The control: the same forge with nothing broken passes.
	if err := CheckSVID(forge(t, c, func(*x509.Certificate) {}), c.Roots(), td, t0); err != nil {
		t.Errorf("an unbroken forged leaf fails: %v", err)
	}
}

func TestInitRefusesToReplaceACA(t *testing.T) {
	_, dir := newTestCA(t, t0)
	err := Init(InitConfig{Dir: dir, TrustDomain: td})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("Init over an existing CA = %v, want ErrExists", err)
	}
}

func TestReloadGivesTheSameRoot(t *testing.T) {
	c1, dir := newTestCA(t, t0)
	c2, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(t0.Add(time.Hour))}})
	if err != nil {
		t.Fatal(err)
	}
	if !c1.Roots()[0].Equal(c2.Roots()[0]) {
		t.Fatal("reloading the CA changed its root")
	}
	// A leaf from the first verifies with the second's bundle.
	chain, err := c1.SignSVID(p256(t).Public(), apiID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckSVID(chain, c2.Roots(), td, t0.Add(time.Minute)); err != nil {
		t.Errorf("a leaf of the first load does not verify with the second: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	t.Run("missing directory", func(t *testing.T) {
		_, err := Load(LoadConfig{Dir: filepath.Join(t.TempDir(), "nope"), Config: Config{TrustDomain: td}})
		if !errors.Is(err, ErrNoCA) || !strings.Contains(err.Error(), "bulwark ca init") {
			t.Errorf("Load = %v, want ErrNoCA with a hint", err)
		}
	})
	t.Run("missing key", func(t *testing.T) {
		_, dir := newTestCA(t, t0)
		os.Remove(filepath.Join(dir, KeyFile))
		_, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(t0)}})
		if !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), KeyFile) {
			t.Errorf("Load = %v", err)
		}
	})
	t.Run("corrupt certificate", func(t *testing.T) {
		_, dir := newTestCA(t, t0)
		os.WriteFile(filepath.Join(dir, CertFile), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
		_, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(t0)}})
		if !errors.Is(err, ErrInvalidCA) {
			t.Errorf("Load = %v, want ErrInvalidCA", err)
		}
	})
	t.Run("key of another CA", func(t *testing.T) {
		_, dir := newTestCA(t, t0)
		_, other := newTestCA(t, t0)
		key, _ := os.ReadFile(filepath.Join(other, KeyFile))
		os.WriteFile(filepath.Join(dir, KeyFile), key, 0o600)
		_, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(t0)}})
		if !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), "does not belong") {
			t.Errorf("Load = %v", err)
		}
	})
	t.Run("intermediate of another root", func(t *testing.T) {
		_, dir := newTestCA(t, t0)
		_, other := newTestCA(t, t0)
		root, _ := os.ReadFile(filepath.Join(other, RootCertFile))
		os.WriteFile(filepath.Join(dir, RootCertFile), root, 0o644)
		_, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(t0)}})
		if !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), "does not chain") {
			t.Errorf("Load = %v", err)
		}
	})
	t.Run("CA of another trust domain", func(t *testing.T) {
		_, dir := newTestCA(t, t0)
		_, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: spiffeid.RequireTrustDomainFromString("evil.org"), Now: fixedAt(t0)}})
		if !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), "for trust domain example.org, not evil.org") {
			t.Errorf("Load = %v", err)
		}
	})
	t.Run("expired intermediate", func(t *testing.T) {
		_, dir := newTestCA(t, t0)
		_, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(t0.Add(DefaultIntermediateTTL + time.Hour))}})
		if !errors.Is(err, ErrInvalidCA) || !strings.Contains(err.Error(), "not now") {
			t.Errorf("Load = %v", err)
		}
	})
}

// TestPlugInCA: an organisation's own root and a two-level intermediate
// chain, no root key in the directory.
func TestPlugInCA(t *testing.T) {
	dir := t.TempDir()
	rootKey, midKey, sigKey := p256(t), p256(t), p256(t)
	mk := func(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	caTmpl := func(cn string) *x509.Certificate {
		return &x509.Certificate{SerialNumber: mustSerial(), Subject: pkix.Name{Organization: []string{"Example Corp"}, CommonName: cn},
			NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(365 * 24 * time.Hour), KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true, IsCA: true}
	}
	rootT := caTmpl("Example Root")
	root := mk(rootT, rootT, rootKey.Public(), rootKey)
	mid := mk(caTmpl("Example Issuing"), root, midKey.Public(), rootKey)
	sig := mk(caTmpl("Example Mesh"), mid, sigKey.Public(), midKey)
	keyPEM, _ := pemutil.EncodeKey(sigKey)
	os.WriteFile(filepath.Join(dir, RootCertFile), pemutil.EncodeCerts([]*x509.Certificate{root}), 0o644)
	os.WriteFile(filepath.Join(dir, CertFile), pemutil.EncodeCerts([]*x509.Certificate{sig}), 0o644)
	os.WriteFile(filepath.Join(dir, ChainFile), pemutil.EncodeCerts([]*x509.Certificate{sig, mid, root}), 0o644)
	os.WriteFile(filepath.Join(dir, KeyFile), keyPEM, 0o600)

	c, err := Load(LoadConfig{Dir: dir, Config: Config{TrustDomain: td, Now: fixedAt(t0)}})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignSVID(p256(t).Public(), apiID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 3 || !chain[1].Equal(sig) || !chain[2].Equal(mid) {
		t.Errorf("chain = leaf + %d, want leaf, signing, issuing", len(chain)-1)
	}
	opensslVerify(t, root, chain)
}

// TestOpenSSLVerifiesTheChain: a second, independent verifier.
func TestOpenSSLVerifiesTheChain(t *testing.T) {
	c, _ := newTestCA(t, time.Now())
	chain, err := c.SignSVID(p256(t).Public(), apiID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opensslVerify(t, c.Roots()[0], chain)
}

func opensslVerify(t *testing.T, root *x509.Certificate, chain []*x509.Certificate) {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("this test needs openssl (apt-get install openssl): %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "root.pem"), pemutil.EncodeCerts([]*x509.Certificate{root}), 0o644)
	os.WriteFile(filepath.Join(dir, "untrusted.pem"), pemutil.EncodeCerts(chain[1:]), 0o644)
	os.WriteFile(filepath.Join(dir, "leaf.pem"), pemutil.EncodeCerts(chain[:1]), 0o644)
	args := []string{"verify", "-CAfile", filepath.Join(dir, "root.pem"), "-untrusted", filepath.Join(dir, "untrusted.pem"),
		"-purpose", "sslclient", "-attime", strconv.FormatInt(chain[0].NotBefore.Add(time.Minute).Unix(), 10),
		filepath.Join(dir, "leaf.pem")}
	out, err := exec.Command(openssl, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}
