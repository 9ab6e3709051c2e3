package trust

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// t0 is the tests' clock origin: real time, since NewAuthority checks
// chains at the real time.
var t0 = time.Now().Truncate(time.Second)

func at(d time.Duration) Operation { return Operation{Who: "tester", Now: t0.Add(d)} }

// mintAuthority mints a root and an intermediate under it, unprepared.
func mintAuthority(t testing.TB) *Authority {
	t.Helper()
	a, err := DefaultMint(ca.DefaultRootTTL, ca.DefaultIntermediateTTL, t0)("root", seedAuthority(t))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// seedAuthority is an authority of td to mint from (DefaultMint takes the
// trust domain from its certificates).
func seedAuthority(t testing.TB) *Authority {
	t.Helper()
	return seedAuthorityOf(t, td)
}

func seedAuthorityOf(t testing.TB, td spiffeid.TrustDomain) *Authority {
	t.Helper()
	root, rootKey, err := MintRoot(td, ca.DefaultRootTTL, t0)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := MintIntermediate(td, root, rootKey, ca.DefaultIntermediateTTL, t0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthority(root, rootKey, []*x509.Certificate{cert}, key, "init")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// newState is a state with one active authority made at t0.
func newState(t testing.TB) *State {
	t.Helper()
	return New(td, seedAuthority(t), at(0))
}

// mint is DefaultMint at t0.
var mint = DefaultMint(ca.DefaultRootTTL, ca.DefaultIntermediateTTL, t0)

// countingMint counts its calls.
func countingMint(n *int) func(string, *Authority) (*Authority, error) {
	return func(kind string, old *Authority) (*Authority, error) {
		*n++
		return mint(kind, old)
	}
}

// prepared adds a new authority of kind ("root" or "intermediate") as
// prepared and returns it.
func prepared(t testing.TB, s *State, kind string, op Operation) *Authority {
	t.Helper()
	a, err := mint(kind, s.Active())
	if err != nil {
		t.Fatal(err)
	}
	if err := Prepare(s, a, op); err != nil {
		t.Fatal(err)
	}
	return s.Get(a.ID)
}

// allAt is evidence of proxies that all hold seq.
func allAt(seq uint64, nodes ...string) Evidence {
	var ev Evidence
	for _, n := range nodes {
		ev.Proxies = append(ev.Proxies, ProxyAck{Node: n, AgentSeq: seq, ProxySeq: seq, Reported: true})
	}
	return ev
}

// issue signs a leaf for ns/name with the state's active authority.
func issue(t testing.TB, s *State, name string, now time.Time) []*x509.Certificate {
	t.Helper()
	c, err := s.CA(ca.Config{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.SignSVID(key.Public(), spiffeid.RequireFromPath(td, "/ns/default/sa/"+name), 0)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func leafInfo(s *State, chain []*x509.Certificate) LeafInfo {
	return LeafInfo{Serial: serialHex(chain[0].SerialNumber), Issuer: s.IssuerOf(chain[0]), NotAfter: chain[0].NotAfter}
}

// envoyVerify checks chain (leaf first) against a bundle as a proxy
// configured with the bundle's roots and CRLs and
// only_verify_leaf_cert_crl does: the chain verifies to a root, the
// leaf's issuer has a CRL in the bundle (BoringSSL refuses the leaf
// otherwise), that CRL is current, and it does not list the leaf.
func envoyVerify(b Bundle, chain []*x509.Certificate, now time.Time) error {
	roots := x509.NewCertPool()
	for _, r := range b.Roots {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("chain: %w", err)
	}
	issuer := chain[1]
	for _, der := range b.CRLs {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			return fmt.Errorf("crl: %w", err)
		}
		if !bytes.Equal(rl.RawIssuer, issuer.RawSubject) || rl.CheckSignatureFrom(issuer) != nil {
			continue
		}
		if now.Before(rl.ThisUpdate) || now.After(rl.NextUpdate) {
			return errors.New("crl: not current")
		}
		for _, e := range rl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				return errRevoked
			}
		}
		return nil
	}
	return errNoCRL
}

var (
	errRevoked = errors.New("certificate revoked")
	errNoCRL   = errors.New("unable to get certificate CRL")
)

// crlSerials returns the serials a's CRL lists, and its number.
func crlSerials(t testing.TB, a *Authority) ([]string, uint64) {
	t.Helper()
	if len(a.CRL) == 0 {
		t.Fatalf("authority %s has no CRL", a.ID)
	}
	rl, err := x509.ParseRevocationList(a.CRL)
	if err != nil {
		t.Fatal(err)
	}
	if err := rl.CheckSignatureFrom(a.Signing()); err != nil {
		t.Fatalf("authority %s: CRL not signed by its signing certificate: %v", a.ID, err)
	}
	var out []string
	for _, e := range rl.RevokedCertificateEntries {
		out = append(out, serialHex(e.SerialNumber))
	}
	return out, rl.Number.Uint64()
}

func wantErr(t testing.TB, err, target error, contains ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", target)
	}
	if target != nil && !errors.Is(err, target) {
		t.Fatalf("error %q is not %v", err, target)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("error %q does not say %q", err, c)
		}
	}
}

func lastEvent(s *State) Event { return s.Events[len(s.Events)-1] }
