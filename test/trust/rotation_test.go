package trust

import (
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// testReissue is the re-issue window the tests ask the control plane
// for: every workload replaces a leaf of a retired authority within it.
// (The default, minutes, is for fleets.) Leaves live longer than any
// test, so every leaf replaced during a test was replaced by that push,
// not by a renewal falling due.
const testReissue = 4 * time.Second

func TestRootRotationUnderTraffic(t *testing.T) { testRotation(t, "root") }

func TestIntermediateRotationUnderTraffic(t *testing.T) { testRotation(t, "intermediate") }

// testRotation rotates the authority with `bulwark ca rotate --kind kind
// --wait` while every pair of the mesh calls continuously: not one
// request may fail, every Envoy must end presenting a leaf of the new
// authority, trusting only what is not removed (for a root rotation: the
// old root out of every bundle), with the new authority's CRL only.
func testRotation(t *testing.T, kind string) {
	m := startMesh(t, options{reissueWithin: testReissue})
	st0 := m.status()
	old := active(t, st0)
	before := map[string]*envoyTrust{}
	for _, w := range m.workloads {
		e := w.trust()
		before[w.name] = e
		if e.leafAuthority() != old.GetId() {
			t.Fatalf("%s presents a leaf of authority %q, want the active one, %s: %s", w.name, e.leafAuthority(), old.GetId(), e)
		}
		if len(e.Roots) != 1 {
			t.Fatalf("%s trusts %d roots before the rotation, want 1: %s", w.name, len(e.Roots), e)
		}
	}
	oldRoot := before[m.workloads[0].name].Roots[0]

	tr := m.startTraffic(t)
	time.Sleep(time.Second)
	hs0 := m.freshHandshakes()
	watch := m.watch()
	start := time.Now()
	out, took := m.mustCA(3*time.Minute, "rotate", "--kind", kind, "--wait", "--reason", "test: "+kind+" rotation under traffic")
	seen := watch.stop()
	t.Logf("bulwark ca rotate --kind %s --wait returned after %s:\n%s", kind, took.Round(time.Millisecond), out)
	time.Sleep(time.Second) // traffic on the new authority alone
	end := time.Now()
	tr.stop()
	hs1 := m.freshHandshakes()

	tr.requireNoFailures(t, kind+" rotation", start.Add(-time.Second), end, nil)
	var requests, freshRequests int
	for _, s := range tr.streams {
		n := len(s.between(start, end))
		requests += n
		if s.kind == fresh {
			freshRequests += n
		}
	}
	if hs1-hs0 < freshRequests {
		t.Errorf("the callees counted %d handshakes during the rotation, want at least the %d fresh-connection requests", hs1-hs0, freshRequests)
	}

	st := m.status()
	if r := st.GetRotation(); r != nil {
		t.Fatalf("rotate --wait returned with the rotation still in progress: step %s, waiting %q %v", r.GetStep(), r.GetWaiting(), r.GetLaggards())
	}
	cur := active(t, st)
	if cur.GetId() == old.GetId() {
		t.Fatalf("the authority %s is still active after the rotation: %s", old.GetId(), authorities(st))
	}
	if a := authority(st, old.GetId()); a != nil && a.GetPhase() != string(trust.Removed) {
		t.Errorf("the old authority %s is %s after the rotation, want removed", old.GetId(), a.GetPhase())
	}
	var live []string
	for _, a := range st.GetAuthorities() {
		if a.GetPhase() != string(trust.Removed) {
			live = append(live, a.GetId())
		}
	}
	if len(live) != 1 {
		t.Errorf("authorities not removed after the rotation: %v, want only the new one, %s", live, cur.GetId())
	}
	if kind == "intermediate" && cur.GetRootSubject() != old.GetRootSubject() {
		t.Errorf("an intermediate rotation changed the root: %q, was %q", cur.GetRootSubject(), old.GetRootSubject())
	}

	for _, w := range m.workloads {
		e := w.trust()
		t.Logf("%s after: %s", w.name, e)
		if e.leafAuthority() != cur.GetId() {
			t.Errorf("%s presents a leaf of authority %q, want the new one, %s", w.name, e.leafAuthority(), cur.GetId())
		}
		if e.leafSerial() == before[w.name].leafSerial() {
			t.Errorf("%s presents the leaf it had before the rotation, %s", w.name, e.leafSerial())
		}
		if !slices.Contains(e.Leaves, e.leafSerial()) {
			t.Errorf("%s: /certs lists leaves %v, not the active secret's %s", w.name, e.Leaves, e.leafSerial())
		}
		if len(e.Roots) != 1 {
			t.Errorf("%s trusts %d roots after the rotation, want 1: %s", w.name, len(e.Roots), e)
		}
		switch kind {
		case "root":
			if e.trusts(oldRoot) || slices.Contains(e.CACerts, serialHex(oldRoot.SerialNumber)) {
				t.Errorf("%s still trusts the old root %s after a root rotation: %s", w.name, serialHex(oldRoot.SerialNumber), e)
			}
		case "intermediate":
			if !e.trusts(oldRoot) {
				t.Errorf("%s no longer trusts the root after an intermediate rotation: %s", w.name, e)
			}
		}
		if !slices.Equal(e.CACerts, e.rootSerials()) {
			t.Errorf("%s: /certs lists CA certificates %v, the active trust bundle holds %v", w.name, e.CACerts, e.rootSerials())
		}
		checkCRLs(t, w, e, []*x509.Certificate{e.Chain[1]})
	}

	t.Logf("MEASURED: %s rotation under traffic: `bulwark ca rotate --kind %s --wait` took %s; %d requests among %d pairs during it (%d on fresh connections, each a new mTLS handshake), %d failed",
		kind, kind, took.Round(100*time.Millisecond), requests, len(m.pairs()), freshRequests, countFailures(tr, start, end))
	t.Logf("MEASURED: %s rotation steps as the control plane recorded them: %s", kind, strings.Join(eventTimings(st, start), "; "))
	t.Logf("MEASURED: %s rotation as a client polling every 100ms saw it: %s", kind, strings.Join(seen, "; "))
}

// checkCRLs checks that e holds exactly one CRL per signing certificate
// in signers, each signed by it, and that Envoy checks leaves only
// against them.
func checkCRLs(t *testing.T, w *workload, e *envoyTrust, signers []*x509.Certificate) {
	t.Helper()
	if !e.OnlyLeafCRL {
		t.Errorf("%s: the trust bundle does not set only_verify_leaf_cert_crl", w.name)
	}
	if len(e.CRLs) != len(signers) {
		t.Errorf("%s holds %d CRLs, want %d (one per authority not removed)", w.name, len(e.CRLs), len(signers))
		return
	}
	for _, s := range signers {
		found := false
		for _, c := range e.CRLs {
			if c.CheckSignatureFrom(s) == nil {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no CRL signed by %s (authority %s)", w.name, s.Subject, authorityID(s))
		}
	}
}

// countFailures counts the failed requests of every stream in [from, to).
func countFailures(tr *traffic, from, to time.Time) int {
	n := 0
	for _, s := range tr.streams {
		for _, r := range s.between(from, to) {
			if r.err != nil {
				n++
			}
		}
	}
	return n
}

// prepared returns the prepared authorities of st.
func prepared(st *cav1.TrustStatus) []*cav1.TrustAuthority {
	var out []*cav1.TrustAuthority
	for _, a := range st.GetAuthorities() {
		if a.GetPhase() == string(trust.Prepared) {
			out = append(out, a)
		}
	}
	return out
}
