package trust

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// TestRevokeIntermediateUnderTraffic is the README's emergency "the
// intermediate's key was stolen": with traffic among the three
// workloads, the active authority's signing certificate is revoked by
// serial. Another authority takes over at once; every Envoy ends
// presenting a leaf of it, with no CRL of the revoked authority in its
// trust bundle (so every leaf that authority signed is refused), and the
// calls pass again, within a bound, and fail no more from then on.
// Failures during the switch are the price the runbook names (a
// workload's old leaf is refused from the moment its issuer's CRL leaves
// a peer's bundle until it renews) and are measured, not forbidden.
//
// A certificate of the revoked authority is no credential for a renewal,
// with one exception by design (identity/issuer checkVouched): the very
// certificate this control plane issued, presented with its key, which
// is how the workloads renew onto the new authority by themselves. A
// leaf minted with the stolen key for a workload is refused.
func TestRevokeIntermediateUnderTraffic(t *testing.T) {
	m := startMesh(t, options{})
	old := active(t, m.status())

	// `bulwark ca status --json` names the authority (its ID, the hash of
	// its signing certificate) but not the signing certificate's serial:
	// take it from the chain every Envoy presents, checked against the ID.
	var signing *x509.Certificate
	before := map[string]*envoyTrust{}
	for _, w := range m.workloads {
		e := w.trust()
		before[w.name] = e
		if e.leafAuthority() != old.GetId() {
			t.Fatalf("%s presents a leaf of authority %q, want the active one, %s: %s", w.name, e.leafAuthority(), old.GetId(), e)
		}
		signing = e.Chain[1]
		if !hasCRLOf(e, signing) {
			t.Fatalf("%s holds no CRL of the active authority %s before the revocation, so its absence below would prove nothing: %s", w.name, old.GetId(), e)
		}
	}
	stolen := m.storedAuthority(old.GetId())
	if !stolen.Signing().Equal(signing) {
		t.Fatalf("the CA directory's authority %s has signing certificate %s, the Envoys present %s",
			old.GetId(), serialHex(stolen.Signing().SerialNumber), serialHex(signing.SerialNumber))
	}
	// Each workload's certificate of the soon revoked authority, with its
	// key, as the agent hands it to its Envoy.
	oldSVIDs := map[string]*x509svid.SVID{}
	for _, w := range m.workloads {
		svid, err := w.sdsCertificate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if serialHex(svid.Certificates[0].SerialNumber) != before[w.name].leafSerial() {
			t.Fatalf("%s: the agent hands out leaf %s, its Envoy presents %s", w.name, serialHex(svid.Certificates[0].SerialNumber), before[w.name].leafSerial())
		}
		oldSVIDs[w.name] = svid
	}

	tr := m.startTraffic(t)
	start := time.Now()
	time.Sleep(time.Second)
	tr.requireNoFailures(t, "before the revocation", start, time.Now(), nil)

	// From just before the command, every Envoy is read every 100ms
	// until it presents a leaf of the new authority and holds no CRL of
	// the revoked one, within bound of the command's start. The bound is
	// generous for two busy cores: the agents renew at once when their
	// issuer's CRL leaves the bundle, which takes a second or two.
	const bound = 20 * time.Second
	serial := serialHex(signing.SerialNumber)
	revoking := time.Now()
	switches := make(chan envoySwitch, 1)
	go func() { switches <- m.waitSwitch(revoking, bound, signing) }()
	out, took := m.mustCA(30*time.Second, "revoke", "--serial", serial, "--reason", "test: intermediate key stolen")
	t.Logf("bulwark ca revoke --serial %s (authority %s) took %s:\n%s", serial, old.GetId(), took.Round(time.Millisecond), out)

	st := m.status()
	if a := authority(st, old.GetId()); a == nil || !a.GetRevoked() {
		t.Errorf("authority %s is not shown revoked after the revoke: %s", old.GetId(), authorities(st))
	}
	cur := active(t, st)
	if cur.GetId() == old.GetId() {
		t.Fatalf("the revoked authority %s is still the active one: %s", old.GetId(), authorities(st))
	}
	if cur.GetRootSubject() != old.GetRootSubject() {
		t.Errorf("the revocation of an intermediate changed the root: %q, was %q", cur.GetRootSubject(), old.GetRootSubject())
	}
	sw := <-switches
	if len(sw.lagging) > 0 {
		t.Fatalf("not every Envoy presents a leaf of the new authority %s without a CRL of the revoked %s within %s of the revoke:\n  %s",
			cur.GetId(), old.GetId(), bound, strings.Join(sw.lagging, "\n  "))
	}
	switched, crlGone, after := sw.switched, sw.crlGone, sw.after
	for _, w := range m.workloads {
		if e := after[w.name]; e.leafAuthority() != cur.GetId() {
			t.Fatalf("%s presents a leaf of authority %s after the revoke, want the new active one, %s: %s", w.name, e.leafAuthority(), cur.GetId(), e)
		}
	}
	var allSwitched time.Duration
	for _, d := range switched {
		allSwitched = max(allSwitched, d)
	}

	// The calls pass again: one of every pair on a fresh client, then
	// every stream of the traffic has a success after the switch.
	m.waitCallsPass(time.Until(revoking.Add(bound)))
	for _, s := range tr.streams {
		for !passedSince(s, revoking.Add(allSwitched)) {
			if time.Since(revoking) > bound {
				t.Fatalf("%s: no request has passed since every Envoy switched (%s after the revoke), %s after the revoke", s, allSwitched.Round(time.Millisecond), bound)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The connections made before the switch (kept alive, their leaves of
	// the revoked authority never checked again) are closed: the control
	// plane orders a drain once every proxy holds the bundle without the
	// revoked CRL.
	var drained time.Duration
	for drained == 0 {
		for _, e := range m.status().GetEvents() {
			if at := e.GetAt().AsTime(); e.GetAction() == "drain" && !at.Before(revoking.Add(-time.Second)) {
				drained = max(at.Sub(revoking), time.Millisecond)
			}
		}
		if drained == 0 && time.Since(revoking) > bound {
			t.Fatalf("no drain ordered within %s of the revoke: connections made with leaves of the revoked authority may stay open", bound)
		}
		time.Sleep(100 * time.Millisecond)
	}
	settled := time.Now()
	time.Sleep(2 * time.Second)
	end := time.Now()
	tr.stop()
	tr.requireNoFailures(t, "every call once the revocation settled", settled, end, nil)

	newSigning := after[m.workloads[0].name].Chain[1]
	for _, w := range m.workloads {
		e := after[w.name]
		if e.leafSerial() == before[w.name].leafSerial() {
			t.Errorf("%s presents the leaf it had before the revocation, %s", w.name, e.leafSerial())
		}
		if !e.trusts(before[w.name].Roots[0]) || len(e.Roots) != 1 {
			t.Errorf("%s: the trust bundle after an intermediate's revocation is not the one root it was: %s", w.name, e)
		}
		checkCRLs(t, w, e, []*x509.Certificate{newSigning})
	}

	// Renewal with each workload's old certificate: this control plane
	// issued exactly it, so it still proves the workload, onto the new
	// authority.
	for _, w := range m.workloads {
		leaf, err := w.renewWith(oldSVIDs[w.name])
		switch {
		case err != nil:
			t.Errorf("%s: renewal with the certificate this control plane issued it under the revoked authority: %v, want a new certificate", w.name, err)
		case leaf.CheckSignatureFrom(newSigning) != nil:
			t.Errorf("%s: renewal with its old certificate gave a leaf of %s, want one of the new authority %s", w.name, leaf.Issuer, cur.GetId())
		}
	}
	// Renewal with a leaf minted with the stolen key, for a workload,
	// with a fresh key: it chains to the root every Envoy and the control
	// plane still trust, so only the issuer's check can refuse it.
	victim := m.workload("backend-1")
	forged := m.forge(stolen, victim)
	if _, err := forged.Certificates[0].Verify(x509.VerifyOptions{Roots: certPool(after[victim.name].Roots),
		Intermediates: certPool(forged.Certificates[1:]), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the forged leaf does not chain to the trusted root, so its refusal would prove nothing: %v", err)
	}
	_, err := victim.renewWith(forged)
	t.Logf("renewal of %s with a leaf forged with the revoked authority's key: %v", victim.name, err)
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("renewal of %s with a leaf forged with the revoked authority's key: %v, want PermissionDenied", victim.name, err)
	}

	var perPair []string
	for _, p := range m.pairs() {
		var first, lastF result
		var kinds []string
		nf, n := 0, 0
		for _, k := range []kind{fresh, keepAlive} {
			rs := tr.stream(p, k).between(revoking, settled)
			kf := 0
			for _, r := range rs {
				if r.err == nil {
					continue
				}
				if nf == 0 || r.start.Before(first.start) {
					first = r
				}
				if nf == 0 || r.start.After(lastF.start) {
					lastF = r
				}
				nf++
				kf++
			}
			n += len(rs)
			kinds = append(kinds, fmt.Sprintf("%s %d/%d", k, kf, len(rs)))
		}
		line := fmt.Sprintf("%-22s %3d of %4d failed (%s)", p, nf, n, strings.Join(kinds, ", "))
		if nf > 0 {
			line += fmt.Sprintf(", first %s, last %s: window %s; first error: %v", offset(first.start, revoking), offset(lastF.start, revoking),
				lastF.start.Sub(first.start).Round(time.Millisecond), first.err)
		}
		perPair = append(perPair, line)
	}
	var leaves, crls []string
	for _, w := range m.workloads {
		leaves = append(leaves, fmt.Sprintf("%s +%s", w.name, switched[w.name].Round(time.Millisecond)))
		crls = append(crls, fmt.Sprintf("%s +%s", w.name, crlGone[w.name].Round(time.Millisecond)))
	}
	t.Logf("MEASURED: revoke --serial of the active intermediate under traffic: the command took %s; every Envoy presented a leaf of the new authority %s after the command's start (%s); the revoked authority's CRL left the Envoys' bundles at %s (each Envoy read every 100ms); the drain of the connections made before was ordered at +%s (the control plane's event time)",
		took.Round(time.Millisecond), allSwitched.Round(time.Millisecond), strings.Join(leaves, ", "), strings.Join(crls, ", "), drained.Round(time.Millisecond))
	t.Logf("MEASURED: failed requests from the revoke's start until every call passed again (%s; a keep-alive and a fresh-connection request every %s per pair; times from the command's start):\n  %s",
		settled.Sub(revoking).Round(time.Millisecond), interval, strings.Join(perPair, "\n  "))
}

// hasCRLOf reports whether e's trust bundle carries a CRL signed by
// signing.
func hasCRLOf(e *envoyTrust, signing *x509.Certificate) bool {
	for _, c := range e.CRLs {
		if c.CheckSignatureFrom(signing) == nil {
			return true
		}
	}
	return false
}

// passedSince reports whether a request of s that started at or after
// since has passed.
func passedSince(s *stream, since time.Time) bool {
	for _, r := range s.between(since, time.Now()) {
		if r.err == nil {
			return true
		}
	}
	return false
}

// storedAuthority reads authority id, with its keys, from the CA
// directory's trust state: what a thief of the directory would have.
func (m *mesh) storedAuthority(id string) *trust.Authority {
	m.t.Helper()
	data, err := os.ReadFile(filepath.Join(m.caDir, trust.StateFile))
	if err != nil {
		m.t.Fatal(err)
	}
	st, err := trust.Unmarshal(data)
	if err != nil {
		m.t.Fatal(err)
	}
	a := st.Get(id)
	if a == nil || a.Key == nil {
		m.t.Fatalf("%s: no authority %s with its key", trust.StateFile, id)
	}
	return a
}

// forge mints, with a's signing key, a leaf naming w with a fresh key.
func (m *mesh) forge(a *trust.Authority, w *workload) *x509svid.SVID {
	m.t.Helper()
	td := spiffeid.RequireTrustDomainFromString(trustDomain)
	c, err := ca.New(ca.Config{TrustDomain: td, Roots: []*x509.Certificate{a.Root}, Chain: a.Chain, Signer: a.Key})
	if err != nil {
		m.t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		m.t.Fatal(err)
	}
	id := spiffeid.RequireFromString(w.id())
	chain, err := c.SignWorkloadSVID(key.Public(), id, ca.Workload{Namespace: namespace, Name: w.name}, time.Hour)
	if err != nil {
		m.t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// envoySwitch is what waitSwitch saw of each Envoy (by workload name):
// when it first held no CRL of the revoked authority, when it first also
// presented a leaf of another authority (with what it held then), both
// from the revoke's start; and, past the bound, what the laggards held.
type envoySwitch struct {
	crlGone, switched map[string]time.Duration
	after             map[string]*envoyTrust
	lagging           []string
}

// waitSwitch reads every Envoy every 100ms from since until each holds no
// CRL signed by revoked and presents (in its active secret and in /certs)
// a leaf that revoked did not sign, or until bound has passed since
// since.
func (m *mesh) waitSwitch(since time.Time, bound time.Duration, revoked *x509.Certificate) envoySwitch {
	sw := envoySwitch{crlGone: map[string]time.Duration{}, switched: map[string]time.Duration{}, after: map[string]*envoyTrust{}}
	last := map[string]string{}
	for {
		for _, w := range m.workloads {
			if _, ok := sw.switched[w.name]; ok {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			e, err := readTrust(ctx, w.admin())
			cancel()
			at := time.Since(since)
			if err != nil {
				last[w.name] = err.Error()
				continue
			}
			last[w.name] = e.String()
			if hasCRLOf(e, revoked) {
				continue
			}
			if _, ok := sw.crlGone[w.name]; !ok {
				sw.crlGone[w.name] = at
			}
			if a := e.leafAuthority(); a != "" && a != authorityID(revoked) && slices.Contains(e.Leaves, e.leafSerial()) {
				sw.switched[w.name], sw.after[w.name] = at, e
			}
		}
		if len(sw.switched) == len(m.workloads) {
			return sw
		}
		if time.Since(since) > bound {
			for _, w := range m.workloads {
				if _, ok := sw.switched[w.name]; !ok {
					sw.lagging = append(sw.lagging, fmt.Sprintf("%s: %s", w.name, last[w.name]))
				}
			}
			return sw
		}
		time.Sleep(100 * time.Millisecond)
	}
}
