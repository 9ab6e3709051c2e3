package trust

import (
	"testing"
	"time"
)

func TestADrainFollowsWhatTheBundleNewlyRefuses(t *testing.T) {
	s := newState(t)
	old := s.Active()
	m := newMesh(t, s, "bad", "good")
	if s.DrainPending != 0 || DrainDue(s, allAt(s.Sequence, "default/bad", "default/good"), t0) {
		t.Fatalf("a fresh state has a drain pending: %d", s.DrainPending)
	}

	// A workload revoked before its serials are known refuses nothing yet.
	if err := Revoke(s, Revocation{Kind: ByWorkload, Value: "default/bad", Reason: "stolen key"}, at(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if s.DrainPending != 0 {
		t.Fatalf("an entry that names no certificate yet made a drain pending (%d)", s.DrainPending)
	}
	if !AddSerials(s, ByWorkload, "default/bad", []LeafInfo{leafInfo(s, m.nodes[0].chain)}, at(2*time.Minute)) {
		t.Fatal("AddSerials added nothing")
	}
	pending := s.DrainPending
	if pending != s.Sequence || !s.DrainPendingAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("drain pending %d at %s after the serial went on the CRL at sequence %d", pending, s.DrainPendingAt, s.Sequence)
	}

	// It waits for every proxy to hold the bundle that refuses it, or
	// for the deadline.
	now := t0.Add(2*time.Minute + time.Second)
	if DrainDue(s, allAt(pending-1, "default/bad", "default/good"), now) {
		t.Error("drain due while the proxies hold the bundle before the revocation")
	}
	if DrainDue(s, Evidence{Proxies: allAt(pending, "default/good").Proxies, Missing: []string{"replica ha-2"}}, now) {
		t.Error("drain due while evidence is missing")
	}
	if !DrainDue(s, allAt(pending, "default/bad", "default/good"), now) {
		t.Error("drain not due once every proxy holds the bundle")
	}
	// The revoked workload's own proxy gets no bundle any more: nothing
	// waits for it.
	lagging := allAt(pending, "default/good")
	lagging.Proxies = append(lagging.Proxies, ProxyAck{Node: "default/bad", Reported: true, AgentSeq: pending - 1, ProxySeq: pending - 1})
	if !DrainDue(s, lagging, now) {
		t.Error("drain waits for the revoked workload's own proxy")
	}
	if !DrainDue(s, allAt(pending-1, "default/bad"), t0.Add(2*time.Minute+DrainDeadline)) {
		t.Error("drain not due at the deadline")
	}

	seq := s.Sequence
	OrderDrain(s, at(3*time.Minute))
	if s.RevocationEpoch != pending || s.Sequence != seq || lastEvent(s).Action != "drain" {
		t.Fatalf("after OrderDrain: epoch %d (want %d), sequence %d (want %d), last event %q", s.RevocationEpoch, pending, s.Sequence, seq, lastEvent(s).Action)
	}
	if DrainDue(s, allAt(s.Sequence, "default/bad", "default/good"), t0.Add(time.Hour)) {
		t.Error("the same drain is due twice")
	}

	// Taking a refusal back drains nothing; a stored state keeps it all.
	if err := Unrevoke(s, ByWorkload, "default/bad", at(4*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if s.DrainPending != pending {
		t.Errorf("unrevoke moved the pending drain from %d to %d", pending, s.DrainPending)
	}
	back, err := Unmarshal(must(Marshal(s)))
	if err != nil {
		t.Fatal(err)
	}
	if back.DrainPending != s.DrainPending || back.RevocationEpoch != s.RevocationEpoch || !back.DrainPendingAt.Equal(s.DrainPendingAt) {
		t.Errorf("round trip: pending %d epoch %d at %s, want %d %d %s", back.DrainPending, back.RevocationEpoch, back.DrainPendingAt,
			s.DrainPending, s.RevocationEpoch, s.DrainPendingAt)
	}

	// Removing an authority refuses every leaf it signed: a drain.
	prepared(t, s, "intermediate", at(5*time.Minute))
	next := s.Authorities[len(s.Authorities)-1]
	if err := Activate(s, next.ID, allAt(s.Sequence, "default/good"), at(6*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if s.DrainPending != pending {
		t.Errorf("activation made a drain pending")
	}
	if err := Remove(s, old.ID, allAt(s.Sequence, "default/good"), at(7*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if s.DrainPending != s.Sequence {
		t.Errorf("removing %s left the pending drain at %d, sequence %d", old.ID, s.DrainPending, s.Sequence)
	}
}

func TestUnmarshalRefusesAnEpochAheadOfTheSequence(t *testing.T) {
	s := newState(t)
	s.DrainPending, s.RevocationEpoch = s.Sequence, s.Sequence+1
	if _, err := Unmarshal(must(Marshal(s))); err == nil {
		t.Fatal("a revocation epoch beyond the pending drain loaded")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
