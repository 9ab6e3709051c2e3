package trust

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/ca"
)

// mesh is a fake mesh: workloads with the bundle their agent and proxy
// hold and the leaf they present.
type mesh struct {
	t     *testing.T
	nodes []*node
}

type node struct {
	name               string
	agentSeq, proxySeq uint64
	chain              []*x509.Certificate
}

func newMesh(t *testing.T, s *State, names ...string) *mesh {
	m := &mesh{t: t}
	for _, n := range names {
		m.nodes = append(m.nodes, &node{name: n, agentSeq: s.Sequence, proxySeq: s.Sequence, chain: issue(t, s, n, t0)})
	}
	return m
}

func (m *mesh) evidence(s *State) Evidence {
	var ev Evidence
	for _, n := range m.nodes {
		ev.Proxies = append(ev.Proxies, ProxyAck{Node: "ns/" + n.name, AgentSeq: n.agentSeq, ProxySeq: n.proxySeq, Reported: true,
			Leaves: []LeafInfo{leafInfo(s, n.chain)}})
	}
	return ev
}

// sync brings the named nodes (all when none) to the state's sequence.
func (m *mesh) sync(s *State, names ...string) {
	for _, n := range m.nodes {
		if len(names) == 0 || slices.Contains(names, n.name) {
			n.agentSeq, n.proxySeq = s.Sequence, s.Sequence
		}
	}
}

// reissue gives the named nodes (all when none) a leaf of the active
// authority, as agents do when the bundle's signing CA is not theirs.
func (m *mesh) reissue(s *State, names ...string) {
	for _, n := range m.nodes {
		if len(names) == 0 || slices.Contains(names, n.name) {
			n.chain = issue(m.t, s, n.name, t0)
		}
	}
}

// accepted checks every node's leaf against the bundle as a proxy would.
func (m *mesh) accepted(s *State) map[string]error {
	out := map[string]error{}
	for _, n := range m.nodes {
		out[n.name] = envoyVerify(s.Bundle(), n.chain, t0.Add(time.Hour))
	}
	return out
}

// advance runs Advance on a state that went through Marshal and
// Unmarshal, as a driver restarted from the store would see it.
func advance(t *testing.T, s *State, ev Evidence, mintFn func(string, *Authority) (*Authority, error)) (*State, bool, error) {
	t.Helper()
	s = roundTrip(t, s)
	changed, err := Advance(s, ev, at(time.Minute), mintFn)
	return s, changed, err
}

func roundTrip(t testing.TB, s *State) *State {
	t.Helper()
	data, err := Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func wantGate(t *testing.T, err error, step string, laggards ...string) {
	t.Helper()
	var g *GateError
	if !errors.As(err, &g) {
		t.Fatalf("got %v, want the %s gate to refuse", err, step)
	}
	if g.Step != step {
		t.Fatalf("the %s gate refused, want %s: %v", g.Step, step, err)
	}
	if len(g.Laggards) != len(laggards) {
		t.Fatalf("laggards %q, want %d naming %q", g.Laggards, len(laggards), laggards)
	}
	for i, l := range laggards {
		if !strings.Contains(g.Laggards[i], l) {
			t.Errorf("laggard %q does not name %q", g.Laggards[i], l)
		}
	}
}

func TestRotationsDrivenByAdvance(t *testing.T) {
	for _, kind := range []string{"root", "intermediate"} {
		t.Run(kind, func(t *testing.T) {
			s := newState(t)
			old := s.Active()
			m := newMesh(t, s, "a", "b", "c")
			minted := 0
			mintFn := countingMint(&minted)
			bundle := func(roots, crls int, signing string) {
				t.Helper()
				b := s.Bundle()
				if len(b.Roots) != roots || len(b.CRLs) != crls || b.Sequence != s.Sequence || b.ReissueWithin != DefaultReissueWithin {
					t.Errorf("bundle: %d roots, %d CRLs, sequence %d, want %d roots, %d CRLs, sequence %d", len(b.Roots), len(b.CRLs), b.Sequence, roots, crls, s.Sequence)
				}
				if id := s.IssuerOf(&x509.Certificate{}); id != "" {
					t.Fatal("an empty certificate has an issuer")
				}
				if b.Signing == nil || authorityID(b.Signing) != signing {
					t.Errorf("bundle signing CA is not %s", signing)
				}
			}
			newRoots := map[string]int{"root": 2, "intermediate": 1}[kind]

			if err := StartRotation(s, kind, at(0)); err != nil {
				t.Fatal(err)
			}
			wantErr(t, StartRotation(s, "root", at(0)), ErrIllegal, "in progress")

			// prepare: needs no gate.
			var changed bool
			var err error
			s, changed, err = advance(t, s, m.evidence(s), mintFn)
			if err != nil || !changed || minted != 1 || s.Rotation.Target == "" || s.Rotation.Step != StepActivate {
				t.Fatalf("prepare: changed %v, err %v, minted %d, rotation %+v", changed, err, minted, s.Rotation)
			}
			target := s.Rotation.Target
			if s.Get(target).Phase != Prepared || s.Get(target).Origin != "minted" {
				t.Fatalf("target %+v", s.Get(target))
			}
			if (s.Get(target).Root.Equal(old.Root)) != (kind == "intermediate") {
				t.Fatal("the new authority's root is not what the kind calls for")
			}
			bundle(newRoots, 2, old.ID)

			// activate: every proxy must hold the new bundle.
			_, changed, err = advance(t, s, m.evidence(s), mintFn)
			wantGate(t, err, "activate", "ns/a (holds bundle 1", "ns/b", "ns/c")
			if changed {
				t.Error("a refused step changed the state")
			}
			m.sync(s, "a", "b")
			_, _, err = advance(t, s, m.evidence(s), mintFn)
			wantGate(t, err, "activate", "ns/c (holds bundle 1, needs 3)")
			m.sync(s)
			s, changed, err = advance(t, s, m.evidence(s), mintFn)
			if err != nil || !changed || s.Rotation.Step != StepReissue {
				t.Fatalf("activate: %v %v %+v", changed, err, s.Rotation)
			}
			bundle(newRoots, 2, target)
			if s.Get(old.ID).Phase != Retired || s.Get(target).Phase != Active {
				t.Fatal("activation did not retire the old authority")
			}
			for n, err := range m.accepted(s) {
				if err != nil {
					t.Errorf("%s: its old leaf is refused while the old authority is retired: %v", n, err)
				}
			}

			// reissue: every workload presents a leaf of the new one.
			_, _, err = advance(t, s, m.evidence(s), mintFn)
			wantGate(t, err, "reissue", "ns/a: leaf", "ns/b: leaf", "ns/c: leaf")
			m.reissue(s, "a", "c")
			_, _, err = advance(t, s, m.evidence(s), mintFn)
			wantGate(t, err, "reissue", "ns/b: leaf")
			stale := m.nodes[1].chain
			m.reissue(s)
			s, changed, err = advance(t, s, m.evidence(s), mintFn)
			if err != nil || !changed || s.Rotation.Step != StepRemove {
				t.Fatalf("reissue: %v %v %+v", changed, err, s.Rotation)
			}

			// remove.
			s, changed, err = advance(t, s, m.evidence(s), mintFn)
			if err != nil || !changed || s.Rotation.Step != StepConfirm || s.Rotation.ConfirmSeq != s.Sequence {
				t.Fatalf("remove: %v %v %+v", changed, err, s.Rotation)
			}
			bundle(1, 1, target)
			if s.Get(old.ID).Phase != Removed || len(s.Get(old.ID).CRL) != 0 {
				t.Error("the old authority is not removed")
			}
			if kind == "root" && containsCert(s.Bundle().Roots, old.Root) {
				t.Error("the old root is still in the bundle")
			}
			for n, err := range m.accepted(s) {
				if err != nil {
					t.Errorf("%s: its new leaf is refused: %v", n, err)
				}
			}
			// A leaf of the removed authority is refused: by its chain
			// after a root rotation, by the missing CRL of its issuer
			// after an intermediate rotation (its root is still trusted).
			err = envoyVerify(s.Bundle(), stale, t0.Add(time.Hour))
			if kind == "intermediate" && !errors.Is(err, errNoCRL) || kind == "root" && (err == nil || errors.Is(err, errNoCRL)) {
				t.Errorf("a leaf of the removed authority: %v", err)
			}

			// confirm: every proxy holds the bundle without the old one.
			_, _, err = advance(t, s, m.evidence(s), mintFn)
			wantGate(t, err, "confirm", "ns/a", "ns/b", "ns/c")
			m.sync(s)
			s, changed, err = advance(t, s, m.evidence(s), mintFn)
			if err != nil || !changed || s.Rotation != nil {
				t.Fatalf("confirm: %v %v %+v", changed, err, s.Rotation)
			}
			if e := lastEvent(s); e.Action != "rotate" || !strings.Contains(e.Detail, "done") || e.Forced {
				t.Errorf("last event %+v", e)
			}
			s, changed, err = advance(t, s, m.evidence(s), mintFn)
			if changed || err != nil {
				t.Errorf("after the rotation: %v %v", changed, err)
			}
			if minted != 1 {
				t.Errorf("minted %d times", minted)
			}
			for _, e := range s.Events {
				if e.Forced {
					t.Errorf("forced event in an unforced rotation: %+v", e)
				}
			}
		})
	}
}

func TestARestartedDriverDoesNotMintAgain(t *testing.T) {
	s := newState(t)
	if err := StartRotation(s, "intermediate", at(0)); err != nil {
		t.Fatal(err)
	}
	minted := 0
	if _, err := Advance(s, Evidence{}, at(0), countingMint(&minted)); err != nil {
		t.Fatal(err)
	}
	target := s.Rotation.Target
	n := len(s.Authorities)
	// The driver restarts from the stored state; and even a stored state
	// still at the prepare step (written by a driver that crashed between
	// the two) never mints once Target is set.
	for _, step := range []string{StepActivate, StepPrepare} {
		r := roundTrip(t, s)
		r.Rotation.Step = step
		if _, err := Advance(r, Evidence{}, at(time.Minute), countingMint(&minted)); err != nil {
			t.Fatal(err)
		}
		if minted != 1 || len(r.Authorities) != n || r.Rotation.Target != target {
			t.Errorf("step %s: minted %d times, %d authorities, target %s (was %s)", step, minted, len(r.Authorities), r.Rotation.Target, target)
		}
	}
}

func TestAForcedRotationRecordsEveryOverriddenGate(t *testing.T) {
	s := newState(t)
	m := newMesh(t, s, "a")
	op := at(0)
	op.Force = true
	op.Reason = "key compromise"
	if err := StartRotation(s, "intermediate", op); err != nil {
		t.Fatal(err)
	}
	// Nobody ever catches up, nobody re-issues.
	for i := 0; s.Rotation != nil; i++ {
		if i > 10 {
			t.Fatal("the forced rotation does not finish")
		}
		if _, err := Advance(s, m.evidence(s), at(time.Minute), mint); err != nil {
			t.Fatal(err)
		}
	}
	var forced []string
	for _, e := range s.Events {
		if e.Forced {
			forced = append(forced, e.Action+": "+e.Detail)
		}
	}
	// activate, reissue, remove and confirm were each refused and forced.
	if len(forced) != 4 {
		t.Errorf("forced events:\n%s", strings.Join(forced, "\n"))
	}
	if err := envoyVerify(s.Bundle(), m.nodes[0].chain, t0.Add(time.Hour)); !errors.Is(err, errNoCRL) {
		t.Errorf("the workload that never re-issued: %v; forcing should have cut it off", err)
	}
}

func TestStartRotationRefusals(t *testing.T) {
	s := newState(t)
	s.Active().RootKey = nil
	wantErr(t, StartRotation(s, "intermediate", at(0)), ErrIllegal, "root key", "hand in")
	wantErr(t, StartRotation(s, "everything", at(0)), ErrInvalid, "everything")
	// A root rotation mints its own root.
	if err := StartRotation(s, "root", at(0)); err != nil {
		t.Fatal(err)
	}
	if err := CancelRotation(s, at(0)); err != nil || s.Rotation != nil {
		t.Fatal(err)
	}
	wantErr(t, CancelRotation(s, at(0)), ErrIllegal)
}

func TestHandInAndRotateToIt(t *testing.T) {
	s := newState(t)
	act := s.Active()
	// A plug-in CA: the operator's PKI signs the next intermediate with
	// the root key Bulwark does not hold.
	rootKey := act.RootKey
	for _, a := range s.Authorities {
		a.RootKey = nil
	}
	cert, key, err := MintIntermediate(td, act.Root, rootKey, 365*24*time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := HandIn(s, nil, []*x509.Certificate{cert}, act.Key, at(0)); err == nil {
		t.Fatal("handed in with a key that is not the certificate's")
	}
	a, err := HandIn(s, nil, []*x509.Certificate{cert}, key, at(0))
	if err != nil {
		t.Fatal(err)
	}
	if a.Phase != Prepared || a.Origin != "handed-in" || !a.Root.Equal(act.Root) || a.RootKey != nil || s.Get(a.ID) != a {
		t.Fatalf("handed in: %+v", a)
	}
	if err := StartRotationTo(s, a.ID[:6], at(0)); err != nil {
		t.Fatal(err)
	}
	if r := s.Rotation; r.Kind != "intermediate" || r.Target != a.ID || r.Step != StepActivate {
		t.Fatalf("rotation %+v", r)
	}
	noMint := func(string, *Authority) (*Authority, error) {
		t.Fatal("a rotation to a handed-in authority minted")
		return nil, nil
	}
	for s.Rotation != nil {
		if _, err := Advance(s, Evidence{}, at(time.Minute), noMint); err != nil {
			t.Fatal(err)
		}
	}
	if s.Active().ID != a.ID || s.Get(act.ID).Phase != Removed {
		t.Error("the handed-in authority did not take over")
	}
}

func TestRenewalDue(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		name    string
		intTTL  time.Duration
		rootTTL time.Duration
		noKey   bool
		at      time.Duration
		due     bool
		warn    bool
		says    string
	}{
		{name: "fresh", intTTL: 730 * day, rootTTL: 3650 * day, at: day},
		{name: "a sixth of two years left", intTTL: 730 * day, rootTTL: 3650 * day, at: 730*day - 121*day, due: true, says: "expires"},
		{name: "just more than a sixth left", intTTL: 730 * day, rootTTL: 3650 * day, at: 730*day - 123*day},
		{name: "short-lived: 30 days is the margin", intTTL: 60 * day, rootTTL: 3650 * day, at: 31 * day, due: true},
		{name: "short-lived, 31 days left", intTTL: 60 * day, rootTTL: 3650 * day, at: 29 * day},
		{name: "no root key, 29 days left: warn", intTTL: 730 * day, rootTTL: 3650 * day, noKey: true, at: 701 * day, warn: true, says: "hand in"},
		{name: "no root key, 100 days left: quiet", intTTL: 730 * day, rootTTL: 3650 * day, noKey: true, at: 630 * day},
		{name: "root expires too: warn to rotate it", intTTL: 730 * day, rootTTL: 730 * day, at: 701 * day, warn: true, says: "rotate the root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, rootKey, _ := MintRoot(td, tc.rootTTL, t0)
			cert, key, _ := MintIntermediate(td, root, rootKey, tc.intTTL, t0)
			if tc.noKey {
				rootKey = nil
			}
			a, err := NewAuthority(root, rootKey, []*x509.Certificate{cert}, key, "test")
			if err != nil {
				t.Fatal(err)
			}
			s := New(td, a, at(0))
			due, warn, why := RenewalDue(s, t0.Add(tc.at))
			if due != tc.due || warn != tc.warn || !strings.Contains(why, tc.says) {
				t.Errorf("due %v warn %v (%s), want %v %v saying %q", due, warn, why, tc.due, tc.warn, tc.says)
			}
			if tc.due {
				if err := StartRotation(s, "intermediate", at(tc.at)); err != nil {
					t.Fatal(err)
				}
				if due, _, _ := RenewalDue(s, t0.Add(tc.at)); due {
					t.Error("due again while the renewal is in progress")
				}
			}
		})
	}
}

func TestBundleRootsAreDistinct(t *testing.T) {
	s := newState(t)
	for range 3 {
		prepared(t, s, "intermediate", at(0))
	}
	b := s.Bundle()
	if len(b.Roots) != 1 || len(b.CRLs) != 4 {
		t.Errorf("%d roots, %d CRLs; want 1 shared root and a CRL each", len(b.Roots), len(b.CRLs))
	}
	_ = fmt.Sprint(ca.DefaultLeafTTL)
}
