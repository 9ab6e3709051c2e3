package trust

import (
	"strings"
	"testing"
	"time"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// TestRotationSurvivesControlPlaneKill SIGKILLs the control plane in the
// middle of a rotation held at one of its gates by one frozen agent (its
// Envoy goes on serving; the agent neither reports nor replaces its
// leaf), and starts it again: the rotation is still in progress with the
// same prepared authority; the restarted control plane, which knew
// nothing of the proxies when it started, goes on holding the gate while
// the agent is frozen; once the agent goes on, the rotation completes by
// itself. Nothing is minted twice, and not one request fails all along.
func TestRotationSurvivesControlPlaneKill(t *testing.T) {
	t.Run("at the activate gate", func(t *testing.T) { testKilledRotation(t, "activate") })
	t.Run("at the remove gate", func(t *testing.T) { testKilledRotation(t, "remove") })
}

// testKilledRotation holds the rotation at gate ("activate": the frozen
// agent has not reported the bundle carrying the new authority;
// "remove": it has, but still presents a leaf of the old authority).
func testKilledRotation(t *testing.T, gate string) {
	m := startMesh(t, options{reissueWithin: testReissue})
	st0 := m.status()
	old := active(t, st0).GetId()
	n0 := len(st0.GetAuthorities())
	api := m.workload("api-1")
	tr := m.startTraffic(t)
	start := time.Now()

	var out string
	switch gate {
	case "activate":
		api.agent.freeze()
		out, _ = m.mustCA(30*time.Second, "rotate", "--kind", "intermediate", "--reason", "test: killed in the middle")
	case "remove":
		id := m.prepare("intermediate")
		m.waitEnvoys(15*time.Second, "the bundle with the prepared authority's CRL", m.workloads,
			func(e *envoyTrust) bool { return len(e.CRLs) == 2 })
		m.waitAcked(15 * time.Second)
		api.agent.freeze()
		out, _ = m.mustCA(30*time.Second, "rotate", "--to", id, "--reason", "test: killed in the middle")
	}
	t.Logf("bulwark ca rotate:\n%s", out)

	// Wait for the rotation to be held up by api-1 at the gate.
	var r *cav1.TrustRotation
	deadline := time.Now().Add(m.reissue + 20*time.Second)
	for {
		st := m.status()
		r = st.GetRotation()
		held := r != nil && r.GetTarget() != "" && r.GetWaiting() != "" && strings.Contains(strings.Join(r.GetLaggards(), " "), api.key())
		if held && gate == "activate" && r.GetStep() == "activate" {
			break
		}
		if held && gate == "remove" && r.GetStep() != "activate" && authority(st, r.GetTarget()).GetPhase() == string(trust.Active) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotation is not held up by %s at its %s gate: %v; %s", api.key(), gate, r, authorities(st))
		}
		time.Sleep(100 * time.Millisecond)
	}
	target := r.GetTarget()
	targetPhase := authority(m.status(), target).GetPhase()
	st1 := m.status()
	if n := len(st1.GetAuthorities()); n != n0+1 {
		t.Fatalf("%d authorities once the rotation prepared %s, want %d: %s", n, target, n0+1, authorities(st1))
	}
	t.Logf("killing the control plane with the rotation at step %s, waiting: %s %v", r.GetStep(), r.GetWaiting(), r.GetLaggards())
	killedAt := r.GetStep()

	m.killControlPlane()
	killed := time.Now()
	m.startControlPlane()
	restarted := time.Now()
	st2 := m.status()
	r2 := st2.GetRotation()
	if r2 == nil || r2.GetTarget() != target || r2.GetOld() != old {
		t.Fatalf("after the restart the rotation is %v, want the one from %s to %s", r2, old, target)
	}
	if n := len(st2.GetAuthorities()); n != n0+1 {
		t.Fatalf("%d authorities after the restart, want %d (nothing minted again): %s", n, n0+1, authorities(st2))
	}

	// The restarted control plane knows nothing of the proxies until they
	// reconnect: api-1's Envoy does (ADS), its frozen agent does not. The
	// gate must go on holding the rotation for as long as the agent is
	// frozen: longer than the others take to replace their leaves.
	hold := restarted.Add(m.reissue + 3*time.Second)
	held := "held"
	for st := st2; ; st = m.status() {
		moved := ""
		switch gate {
		case "activate":
			if a := authority(st, target); a.GetPhase() != targetPhase {
				moved = target + " " + a.GetPhase()
			}
		case "remove":
			if a := authority(st, old); a.GetPhase() != string(trust.Retired) {
				moved = old + " " + a.GetPhase()
			}
		}
		if moved != "" {
			t.Errorf("the restarted control plane passed the %s gate while the agent of %s (frozen) %s: %s, seen %s after the restart, rotation at step %s; events (from the kill): %s",
				gate, api.key(), map[string]string{"activate": "had not reported the bundle that carries " + target, "remove": "presents a leaf of " + old}[gate],
				moved, time.Since(restarted).Round(time.Millisecond), st.GetRotation().GetStep(), strings.Join(eventTimings(st, killed), "; "))
			held = "did NOT hold"
			// Show what it costs: the requests of the rest of the hold.
			time.Sleep(time.Until(hold))
			break
		}
		if time.Now().After(hold) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	api.agent.thaw()
	thawed := time.Now()
	var st *cav1.TrustStatus
	deadline = time.Now().Add(m.reissue + 60*time.Second)
	for {
		st = m.status()
		if st.GetRotation() == nil {
			break
		}
		if time.Now().After(deadline) {
			r := st.GetRotation()
			t.Fatalf("the rotation did not complete after the restart: step %s, waiting %q %v", r.GetStep(), r.GetWaiting(), r.GetLaggards())
		}
		time.Sleep(200 * time.Millisecond)
	}
	done := time.Now()
	time.Sleep(time.Second)
	end := time.Now()
	tr.stop()

	if a := active(t, st); a.GetId() != target {
		t.Errorf("after the rotation %s is active, want %s, the authority prepared before the kill", a.GetId(), target)
	}
	if a := authority(st, old); a != nil && a.GetPhase() != string(trust.Removed) {
		t.Errorf("the old authority %s is %s, want removed", old, a.GetPhase())
	}
	for _, a := range st.GetAuthorities() {
		if a.GetId() != old && a.GetId() != target {
			t.Errorf("authority %s (%s, origin %s) was minted besides %s: the rotation was started over", a.GetId(), a.GetPhase(), a.GetOrigin(), target)
		}
	}
	if n := len(st.GetAuthorities()); n > n0+1 {
		t.Errorf("%d authorities at the end, want at most %d", n, n0+1)
	}
	for _, w := range m.workloads {
		if e := w.trust(); e.leafAuthority() != target {
			t.Errorf("%s presents a leaf of %s, want %s", w.name, e.leafAuthority(), target)
		}
	}
	tr.requireNoFailures(t, "rotation with the control plane killed", start, end, nil)
	t.Logf("MEASURED: rotation resumed after SIGKILL at step %s: the control plane answered again %s after the kill; it %s the %s gate while the agent was frozen (%s after the restart), and completed the rotation %s after the agent went on; %d authorities at the end (%s); %d failed requests",
		killedAt, restarted.Sub(killed).Round(10*time.Millisecond), held, gate, thawed.Sub(restarted).Round(100*time.Millisecond),
		done.Sub(thawed).Round(10*time.Millisecond), len(st.GetAuthorities()), authorities(st), countFailures(tr, start, end))
	t.Logf("MEASURED: the steps of the rotation killed at step %s, as the control plane recorded them: %s", killedAt, strings.Join(eventTimings(st, start), "; "))
}
