package trust

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// phases builds a state with one authority in each situation: removed,
// retired, active, prepared, and a prepared one that is revoked (older
// than "prepared", so never the newest successor).
func phases(t *testing.T) (*State, map[string]string) {
	t.Helper()
	s := newState(t)
	ids := map[string]string{"removed": s.Active().ID}
	step := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	p1 := prepared(t, s, "intermediate", at(0))
	step(Activate(s, p1.ID, Evidence{}, at(0)))
	p2 := prepared(t, s, "root", at(0))
	step(Activate(s, p2.ID, Evidence{}, at(0)))
	step(Remove(s, ids["removed"], Evidence{}, at(0)))
	rv := prepared(t, s, "intermediate", at(0))
	step(RevokeAuthority(s, rv.ID, "test", nil, at(0)))
	p3 := prepared(t, s, "intermediate", at(0))
	ids["retired"], ids["active"], ids["prepared"], ids["revoked"] = p1.ID, p2.ID, p3.ID, rv.ID
	for name, want := range map[string]Phase{"removed": Removed, "retired": Retired, "active": Active, "prepared": Prepared, "revoked": Prepared} {
		if got := s.Get(ids[name]).Phase; got != want {
			t.Fatalf("fixture: %s is %s", name, got)
		}
	}
	return s, ids
}

func TestEveryMoveOfTheStateMachine(t *testing.T) {
	for _, tc := range []struct {
		name string
		move func(s *State, id string, ev Evidence, op Operation) error
		who  string
		// want is nil for a legal move; after it, the phases wanted.
		want  error
		says  string
		after map[string]Phase
	}{
		{name: "activate prepared", move: Activate, who: "prepared",
			after: map[string]Phase{"prepared": Active, "active": Retired, "retired": Retired}},
		{name: "activate active", move: Activate, who: "active", want: ErrIllegal, says: "active already"},
		{name: "activate retired", move: Activate, who: "retired", want: ErrIllegal, says: "does not sign again"},
		{name: "activate removed", move: Activate, who: "removed", want: ErrIllegal, says: "removed"},
		{name: "activate revoked", move: Activate, who: "revoked", want: ErrIllegal, says: "revoked"},
		{name: "retire active hands over to the newest prepared", move: Retire, who: "active",
			after: map[string]Phase{"prepared": Active, "active": Retired, "revoked": Prepared}},
		{name: "retire prepared", move: Retire, who: "prepared", want: ErrIllegal, says: "remove it to abandon it"},
		{name: "retire retired", move: Retire, who: "retired", want: ErrIllegal, says: "retired already"},
		{name: "retire removed", move: Retire, who: "removed", want: ErrIllegal, says: "removed already"},
		{name: "remove retired", move: Remove, who: "retired", after: map[string]Phase{"retired": Removed, "active": Active}},
		{name: "remove prepared abandons it", move: Remove, who: "prepared", after: map[string]Phase{"prepared": Removed, "active": Active}},
		{name: "remove active", move: Remove, who: "active", want: ErrIllegal, says: "active authority"},
		{name: "remove removed", move: Remove, who: "removed", want: ErrIllegal, says: "removed already"},
		{name: "unknown ID", move: Activate, who: "", want: ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ids := phases(t)
			seq, events := s.Sequence, len(s.Events)
			// Every proxy holds the latest bundle and no leaf: no gate
			// refuses, so only the state machine decides.
			ev := allAt(s.Sequence, "ns/a", "ns/b")
			op := at(time.Minute)
			op.Force = true // never overrides an illegal move
			err := tc.move(s, ids[tc.who], ev, op)
			if tc.want != nil {
				wantErr(t, err, tc.want, tc.says)
				var g *GateError
				if errors.As(err, &g) {
					t.Fatalf("an illegal move is a gate refusal: %v", err)
				}
				if s.Sequence != seq || len(s.Events) != events {
					t.Error("a refused move changed the state")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Sequence != seq+1 {
				t.Errorf("sequence %d, want %d", s.Sequence, seq+1)
			}
			if len(s.Events) != events+1 || lastEvent(s).Who != "tester" || !lastEvent(s).At.Equal(op.Now) {
				t.Errorf("events %+v", s.Events[events:])
			}
			if lastEvent(s).Forced {
				t.Error("a move that no gate refused is recorded as forced")
			}
			for who, want := range tc.after {
				if got := s.Get(ids[who]).Phase; got != want {
					t.Errorf("%s: phase %s, want %s", who, got, want)
				}
			}
			active := 0
			for _, a := range s.Authorities {
				if a.Phase == Active {
					active++
				}
			}
			if active != 1 {
				t.Errorf("%d authorities active", active)
			}
		})
	}
}

func TestTimestampsOfEachPhase(t *testing.T) {
	s := newState(t)
	old := s.Active()
	p := prepared(t, s, "intermediate", at(time.Minute))
	if !p.PreparedAt.Equal(t0.Add(time.Minute)) || p.PreparedSeq != 2 || s.Sequence != 2 {
		t.Errorf("prepared at %s, seq %d (state %d)", p.PreparedAt, p.PreparedSeq, s.Sequence)
	}
	if err := Activate(s, p.ID, Evidence{}, at(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if !s.Get(p.ID).ActivatedAt.Equal(t0.Add(2*time.Minute)) || !s.Get(old.ID).RetiredAt.Equal(t0.Add(2*time.Minute)) {
		t.Error("activation and retirement times")
	}
	if err := Remove(s, old.ID, Evidence{}, at(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if !s.Get(old.ID).RemovedAt.Equal(t0.Add(3 * time.Minute)) {
		t.Error("removal time")
	}
}

func TestRetireWithoutASuccessorSaysToPrepareOne(t *testing.T) {
	s := newState(t)
	wantErr(t, Retire(s, s.Active().ID, Evidence{}, at(0)), ErrIllegal, "prepare one first")
}

func TestPrepareRefusesWhatDoesNotBelong(t *testing.T) {
	s := newState(t)
	wantErr(t, Prepare(s, s.Active(), at(0)), ErrIllegal, "active already")
	dup, err := mint("intermediate", s.Active())
	if err != nil {
		t.Fatal(err)
	}
	if err := Prepare(s, dup, at(0)); err != nil {
		t.Fatal(err)
	}
	dup.Phase = ""
	wantErr(t, Prepare(s, dup, at(0)), ErrIllegal, "prepared already")
	other := spiffeid.RequireTrustDomainFromString("other.org")
	s2 := New(other, seedAuthorityOf(t, other), at(0))
	wantErr(t, Prepare(s2, seedAuthority(t), at(0)), ErrInvalid, "example.org")
	late := seedAuthority(t)
	wantErr(t, Prepare(s, late, at(3*365*24*time.Hour)), ErrIllegal, "expired")
}

func TestActivateGateNamesEveryLaggard(t *testing.T) {
	s := newState(t)
	p := prepared(t, s, "root", at(0))
	need := p.PreparedSeq
	ev := Evidence{
		Proxies: []ProxyAck{
			{Node: "ns/ok", AgentSeq: need, ProxySeq: need, Reported: true},
			{Node: "ns/ahead", AgentSeq: need + 5, ProxySeq: need + 3, Reported: true},
			{Node: "ns/proxy-behind", AgentSeq: need, ProxySeq: need - 1, Reported: true},
			{Node: "ns/agent-behind", Replica: "cp-1", AgentSeq: need - 1, ProxySeq: need - 1, Reported: true},
			{Node: "ns/agent-only-behind", AgentSeq: need - 1, ProxySeq: need, Reported: true},
			{Node: "ns/silent", AgentSeq: need, ProxySeq: need, Reported: false},
		},
		Missing: []string{"replica cp-2"},
	}
	seq := s.Sequence
	err := Activate(s, p.ID, ev, at(time.Minute))
	var g *GateError
	if !errors.As(err, &g) {
		t.Fatalf("got %v, want a *GateError", err)
	}
	if s.Sequence != seq || s.Get(p.ID).Phase != Prepared {
		t.Fatal("a refused activation changed the state")
	}
	want := []string{
		fmt.Sprintf("ns/agent-behind via cp-1 (holds bundle %d, needs %d)", need-1, need),
		fmt.Sprintf("ns/agent-only-behind (holds bundle %d, its agent %d, needs %d)", need, need-1, need),
		fmt.Sprintf("ns/proxy-behind (holds bundle %d, its agent %d, needs %d)", need-1, need, need),
		fmt.Sprintf("ns/silent (has reported no bundle, needs %d)", need),
		"evidence from replica cp-2 is missing or stale",
	}
	if strings.Join(g.Laggards, "\n") != strings.Join(want, "\n") {
		t.Errorf("laggards:\n%s\nwant:\n%s", strings.Join(g.Laggards, "\n"), strings.Join(want, "\n"))
	}
	if g.Step != "activate" || g.Authority != p.ID || g.Breaks == "" {
		t.Errorf("gate error %+v", g)
	}
	for _, w := range append(want, "--force", g.Breaks, "activate "+p.ID) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the message does not say %q: %s", w, err)
		}
	}
	if strings.Contains(err.Error(), "ns/ok") || strings.Contains(err.Error(), "ns/ahead") {
		t.Error("a proxy that is ready is named")
	}

	// Once they catch up, it goes through.
	for i := range ev.Proxies {
		ev.Proxies[i].AgentSeq, ev.Proxies[i].ProxySeq, ev.Proxies[i].Reported = need, need, true
	}
	if err := Activate(s, p.ID, ev, at(time.Minute)); !errors.As(err, &g) || len(g.Laggards) != 1 {
		t.Fatalf("missing evidence alone does not block: %v", err)
	}
	ev.Missing = nil
	if err := Activate(s, p.ID, ev, at(time.Minute)); err != nil {
		t.Fatal(err)
	}
}

func TestAGateMessageIsBounded(t *testing.T) {
	s := newState(t)
	p := prepared(t, s, "root", at(0))
	var ev Evidence
	for i := range 30 {
		ev.Proxies = append(ev.Proxies, ProxyAck{Node: fmt.Sprintf("ns/w%02d", i), Reported: true})
	}
	ev.Proxies = append(ev.Proxies, ProxyAck{Node: "ns/" + strings.Repeat("x", 100_000), Reported: true})
	err := Activate(s, p.ID, ev, at(0))
	var g *GateError
	if !errors.As(err, &g) || len(g.Laggards) != 31 {
		t.Fatalf("%v", err)
	}
	if !strings.Contains(err.Error(), "and 11 more") || strings.Contains(err.Error(), "ns/w20") {
		t.Errorf("the message does not stop at 20 names: %s", err)
	}
	if n := len(err.Error()); n > 20*400+2000 {
		t.Errorf("the message is %d bytes", n)
	}
}

func TestForceOverridesAGateAndIsRecorded(t *testing.T) {
	s := newState(t)
	old := s.Active()
	p := prepared(t, s, "root", at(0))
	lagging := allAt(p.PreparedSeq-1, "ns/late")
	op := at(time.Minute)
	op.Force = true
	if err := Activate(s, p.ID, lagging, op); err != nil {
		t.Fatal(err)
	}
	e := lastEvent(s)
	if !e.Forced || !strings.Contains(e.Detail, "refuse the leaves it signs") || !strings.Contains(e.Detail, "ns/late") {
		t.Errorf("event %+v does not record what forcing broke", e)
	}

	leaves := Evidence{Proxies: []ProxyAck{{Node: "ns/old-leaf", Reported: true, ProxySeq: s.Sequence, AgentSeq: s.Sequence,
		Leaves: []LeafInfo{{Serial: "3f2a9c0d11", Issuer: old.ID}, {Serial: "77", Issuer: p.ID}}}}}
	err := Remove(s, old.ID, leaves, at(2*time.Minute))
	var g *GateError
	if !errors.As(err, &g) {
		t.Fatalf("remove with a live leaf: %v", err)
	}
	if want := fmt.Sprintf("ns/old-leaf: leaf 3f2a9c0d.. signed by %s", old.ID); len(g.Laggards) != 1 || g.Laggards[0] != want {
		t.Errorf("laggards %q, want %q", g.Laggards, want)
	}
	op = at(2 * time.Minute)
	op.Force = true
	if err := Remove(s, old.ID, leaves, op); err != nil {
		t.Fatal(err)
	}
	if e := lastEvent(s); !e.Forced || e.Action != "remove" || !strings.Contains(e.Detail, "cannot connect") {
		t.Errorf("event %+v", e)
	}
}

func TestRemoveGate(t *testing.T) {
	s := newState(t)
	old := s.Active()
	p := prepared(t, s, "intermediate", at(0))
	if err := Activate(s, p.ID, Evidence{}, at(0)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ev   Evidence
		lag  string
	}{
		{name: "a leaf it signed", ev: Evidence{Proxies: []ProxyAck{{Node: "ns/a", Leaves: []LeafInfo{{Serial: "abc", Issuer: old.ID}}}}}, lag: "ns/a: leaf abc signed by " + old.ID},
		{name: "missing evidence", ev: Evidence{Missing: []string{"cp-2"}}, lag: "evidence from cp-2 is missing or stale"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Remove(s, old.ID, tc.ev, at(0))
			var g *GateError
			if !errors.As(err, &g) || g.Step != "remove" || !strings.Contains(err.Error(), tc.lag) {
				t.Fatalf("got %v, want a refusal naming %q", err, tc.lag)
			}
		})
	}
	// Leaves of other authorities, and lagging bundles, do not hold it up.
	ev := Evidence{Proxies: []ProxyAck{{Node: "ns/a", Leaves: []LeafInfo{{Serial: "abc", Issuer: p.ID}}}}}
	if err := Remove(s, old.ID, ev, at(0)); err != nil {
		t.Fatal(err)
	}
	if lastEvent(s).Forced {
		t.Error("recorded as forced")
	}
}

func TestTheAuditTrailKeepsTheLatestEvents(t *testing.T) {
	s := newState(t)
	for i := range MaxEvents + 50 {
		if err := Revoke(s, Revocation{Kind: BySerial, Value: fmt.Sprintf("%x", i+1), Reason: "x"}, at(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.Events) != MaxEvents {
		t.Fatalf("%d events kept", len(s.Events))
	}
	if e := lastEvent(s); !strings.Contains(e.Detail, fmt.Sprintf("serial %x ", MaxEvents+50)) {
		t.Errorf("the last event is %+v", e)
	}
	if e := s.Events[0]; !strings.Contains(e.Detail, fmt.Sprintf("serial %x ", 51)) {
		t.Errorf("the first event kept is %+v", e)
	}
}
