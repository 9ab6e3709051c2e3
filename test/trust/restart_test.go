package trust

import (
	"strings"
	"testing"
	"time"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// TestRotationSurvivesControlPlaneKill starts a rotation, holds it at its
// activate gate (one agent frozen, so its bundle report cannot arrive),
// SIGKILLs the control plane there and starts it again: the rotation is
// still in progress with the same prepared authority, and once the agent
// goes on, it completes by itself. Nothing is minted twice, and not one
// request fails all along.
func TestRotationSurvivesControlPlaneKill(t *testing.T) {
	m := startMesh(t, options{reissueWithin: testReissue})
	st0 := m.status()
	old := active(t, st0).GetId()
	n0 := len(st0.GetAuthorities())
	api := m.workload("api-1")
	tr := m.startTraffic(t)
	start := time.Now()

	api.agent.freeze()
	out, _ := m.mustCA(30*time.Second, "rotate", "--kind", "intermediate", "--reason", "test: killed in the middle")
	t.Logf("bulwark ca rotate --kind intermediate:\n%s", out)
	var r *cav1.TrustRotation
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := m.status()
		r = st.GetRotation()
		if r != nil && r.GetTarget() != "" && r.GetStep() == "activate" && r.GetWaiting() != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rotation is not waiting at its activate gate within 20s: %v; %s", r, authorities(st))
		}
		time.Sleep(100 * time.Millisecond)
	}
	target := r.GetTarget()
	st1 := m.status()
	if n := len(st1.GetAuthorities()); n != n0+1 {
		t.Fatalf("%d authorities once the rotation prepared %s, want %d: %s", n, target, n0+1, authorities(st1))
	}
	t.Logf("rotation at step %s, waiting: %s %v", r.GetStep(), r.GetWaiting(), r.GetLaggards())

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
	// reconnect: api-1's Envoy does (ADS) but its frozen agent cannot
	// report the bundle. The gate must go on holding the rotation.
	st := st2
	for hold := time.Now().Add(3 * time.Second); ; st = m.status() {
		if a := authority(st, target); a.GetPhase() != string(trust.Prepared) {
			t.Errorf("the restarted control plane activated %s while the agent of %s (frozen) had not reported the bundle that carries it: seen %s after the restart, rotation at step %s; events (from the kill): %s",
				target, api.key(), time.Since(restarted).Round(time.Millisecond), st.GetRotation().GetStep(), strings.Join(eventTimings(st, killed), "; "))
			// What that costs: the others replace their leaves within the
			// re-issue window, and api-1's Envoy, without the bundle that
			// carries the new authority, refuses them.
			time.Sleep(m.reissue + 2*time.Second)
			break
		}
		if time.Now().After(hold) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	api.agent.thaw()
	thawed := time.Now()
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
	t.Logf("MEASURED: rotation resumed after SIGKILL: control plane killed at step activate, answering again %s after the kill; the rotation completed %s after the frozen agent went on (%s after the restart); %d authorities at the end (%s); %d failed requests",
		restarted.Sub(killed).Round(10*time.Millisecond), done.Sub(thawed).Round(10*time.Millisecond), done.Sub(restarted).Round(10*time.Millisecond),
		len(st.GetAuthorities()), authorities(st), countFailures(tr, start, end))
	t.Logf("MEASURED: resumed rotation steps as the control plane recorded them: %s", strings.Join(eventTimings(st, start), "; "))
}
