package trust

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// prepare runs `bulwark ca prepare --kind kind` and returns the ID of the
// authority it prepared.
func (m *mesh) prepare(kind string) string {
	m.t.Helper()
	before := map[string]bool{}
	for _, a := range m.status().GetAuthorities() {
		before[a.GetId()] = true
	}
	out, _ := m.mustCA(30*time.Second, "prepare", "--kind", kind)
	st := m.status()
	for _, a := range prepared(st) {
		if !before[a.GetId()] {
			return a.GetId()
		}
	}
	m.t.Fatalf("bulwark ca prepare --kind %s prepared nothing new: %s\n%s", kind, authorities(st), out)
	return ""
}

// waitAcked waits until the control plane sees every proxy but those of
// except holding the current bundle: no laggard but them, no evidence
// missing.
func (m *mesh) waitAcked(d time.Duration, except ...*workload) {
	m.t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := m.status()
		var others []string
		for _, l := range st.GetLaggards() {
			if !mentionsAny(l, except) {
				others = append(others, l)
			}
		}
		if len(others) == 0 && len(st.GetMissing()) == 0 {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("after %s the control plane still sees laggards %v (missing evidence: %v) at bundle sequence %d", d, others, st.GetMissing(), st.GetSequence())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitEnvoys waits until cond holds for what the Envoy of each of ws
// holds.
func (m *mesh) waitEnvoys(d time.Duration, what string, ws []*workload, cond func(*envoyTrust) bool) {
	m.t.Helper()
	deadline := time.Now().Add(d)
	for _, w := range ws {
		for {
			e := w.trust()
			if cond(e) {
				break
			}
			if time.Now().After(deadline) {
				m.t.Fatalf("%s: not within %s: %s", w.name, d, what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func mentionsAny(s string, ws []*workload) bool {
	for _, w := range ws {
		if strings.Contains(s, w.key()) {
			return true
		}
	}
	return false
}

func without(ws []*workload, drop ...*workload) []*workload {
	var out []*workload
	for _, w := range ws {
		if !mentionsAny(w.key(), drop) {
			out = append(out, w)
		}
	}
	return out
}

// TestDisconnectedProxyBlocksActivate stops a workload (its agent and its
// Envoy) before a new authority is prepared: activating it is refused,
// naming that workload and no other, until it is back and has loaded the
// new bundle. The calls that do not involve it never fail.
func TestDisconnectedProxyBlocksActivate(t *testing.T) {
	m := startMesh(t, options{reissueWithin: testReissue})
	backend := m.workload("backend-1")
	tr := m.startTraffic(t)
	start := time.Now()
	backend.stop()

	id := m.prepare("intermediate")
	// The others load the bundle carrying the prepared authority (its CRL
	// beside the active one's) and their agents report it.
	m.waitEnvoys(15*time.Second, "the bundle with the prepared authority's CRL", without(m.workloads, backend),
		func(e *envoyTrust) bool { return len(e.CRLs) == 2 })
	m.waitAcked(15*time.Second, backend)

	out, _, err := m.ca(30*time.Second, "activate", id)
	t.Logf("bulwark ca activate %s with %s stopped:\n%s", id, backend.key(), out)
	if err == nil {
		t.Fatalf("activate went through while %s, disconnected, never loaded the bundle with %s", backend.key(), id)
	}
	if !strings.Contains(out, backend.key()) {
		t.Errorf("the refusal does not name the disconnected proxy %s", backend.key())
	}
	for _, w := range without(m.workloads, backend) {
		if strings.Contains(out, w.key()) {
			t.Errorf("the refusal names %s, which holds the bundle", w.key())
		}
	}
	if a := authority(m.status(), id); a.GetPhase() != string(trust.Prepared) {
		t.Fatalf("after the refusal %s is %s, want still prepared", id, a.GetPhase())
	}

	backend.start()
	back := time.Now()
	backend.waitReady(60 * time.Second)
	ready := time.Now()
	refusals := 0
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, err = m.ca(30*time.Second, "activate", id)
		if err == nil {
			break
		}
		refusals++
		if !strings.Contains(out, backend.key()) {
			t.Errorf("activate refused after %s came back, not naming it:\n%s", backend.key(), out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("activate still refused 30s after %s came back:\n%s", backend.key(), out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	activated := time.Now()
	t.Logf("bulwark ca activate %s after %s came back:\n%s", id, backend.key(), out)
	if a := active(t, m.status()); a.GetId() != id {
		t.Errorf("after activate, %s is active, want %s", a.GetId(), id)
	}
	if e := backend.trust(); len(e.CRLs) != 2 {
		t.Errorf("activate went through before %s loaded the bundle with %s: %s", backend.key(), id, e)
	}

	// Every call passes again, and goes on passing.
	m.waitCallsPass(30 * time.Second)
	settled := time.Now()
	time.Sleep(2 * time.Second)
	end := time.Now()
	tr.stop()
	tr.requireNoFailures(t, "calls not involving "+backend.name+", all along", start, end, func(s *stream) bool { return !s.pair.involves(backend) })
	tr.requireNoFailures(t, "every call once "+backend.name+" was back", settled, end, nil)
	t.Logf("MEASURED: disconnected proxy: activate refused naming %s; it came back (agent started) and its Envoy was ready %s later; activate went through %s after it was ready (%d refusals meanwhile)",
		backend.key(), ready.Sub(back).Round(10*time.Millisecond), activated.Sub(ready).Round(10*time.Millisecond), refusals)
}

// TestRemoveTooEarly activates a new authority while one workload cannot
// replace its leaf (its agent frozen: its Envoy goes on serving the leaf
// of the old authority). Removing the old authority is refused, naming
// that workload's leaf; forced, it is removed and the workload's calls
// fail, in both directions, while every other call goes on.
func TestRemoveTooEarly(t *testing.T) {
	m := startMesh(t, options{reissueWithin: testReissue})
	api := m.workload("api-1")
	old := active(t, m.status()).GetId()
	tr := m.startTraffic(t)
	start := time.Now()

	id := m.prepare("intermediate")
	m.waitEnvoys(15*time.Second, "the bundle with the prepared authority's CRL", m.workloads,
		func(e *envoyTrust) bool { return len(e.CRLs) == 2 })
	m.waitAcked(15 * time.Second)
	api.agent.freeze()
	m.mustCA(30*time.Second, "activate", id)
	m.waitEnvoys(m.reissue+15*time.Second, "a leaf of the new authority "+id, without(m.workloads, api),
		func(e *envoyTrust) bool { return e.leafAuthority() == id })
	if e := api.trust(); e.leafAuthority() != old {
		t.Fatalf("%s, its agent frozen, presents a leaf of %s, want still the old %s", api.name, e.leafAuthority(), old)
	}

	out, _, err := m.ca(30*time.Second, "remove", old)
	t.Logf("bulwark ca remove %s while %s holds a leaf of it:\n%s", old, api.key(), out)
	if err == nil {
		t.Fatalf("remove %s went through while %s presents a leaf it signed", old, api.key())
	}
	if !strings.Contains(out, api.key()) {
		t.Errorf("the refusal does not name %s, which holds a leaf of %s", api.key(), old)
	}
	for _, w := range without(m.workloads, api) {
		if strings.Contains(out, w.key()) {
			t.Errorf("the refusal names %s, which holds a leaf of the new authority", w.key())
		}
	}
	if a := authority(m.status(), old); a.GetPhase() != string(trust.Retired) {
		t.Fatalf("after the refusal %s is %s, want retired", old, a.GetPhase())
	}
	beforeForce := time.Now()
	tr.requireNoFailures(t, "before the forced removal", start, beforeForce, nil)

	forcing := time.Now()
	out, _ = m.mustCA(30*time.Second, "remove", old, "--force", "--reason", "test: show what an early removal breaks")
	forced := time.Now()
	t.Logf("bulwark ca remove %s --force:\n%s", old, out)
	if !strings.Contains(out, "FORCED") {
		t.Errorf("the forced removal does not say it was forced and what it breaks")
	}
	forcedEvent := false
	for _, e := range m.status().GetEvents() {
		if e.GetAction() == "remove" && e.GetAuthority() == old && e.GetForced() && e.GetDetail() != "" {
			forcedEvent = true
		}
	}
	if !forcedEvent {
		t.Errorf("no forced remove event of %s with what it breaks in the status", old)
	}

	// What it breaks: the frozen workload's old leaf is refused by every
	// peer (its issuer's CRL left their bundles), so its calls on new
	// connections fail both ways. The others see nothing.
	observe := 6 * time.Second
	time.Sleep(observe)
	end := time.Now()
	tr.requireNoFailures(t, "calls not involving "+api.name, start, end, func(s *stream) bool { return !s.pair.involves(api) })
	var lines []string
	for _, s := range tr.streams {
		if !s.pair.involves(api) {
			continue
		}
		rs := s.between(forcing, end)
		first, lastOK, nf, example := firstFailure(rs, forced)
		lines = append(lines, fmt.Sprintf("%s: %d of %d failed from the command's start to %s after it returned; first failure at %s, last success at %s; e.g. %v",
			s, nf, len(rs), observe, first, lastOK, example))
		if s.kind == fresh && nf == 0 {
			t.Errorf("%s: no request failed in the %s after %s was removed while %s presents a leaf of it", s, observe, old, api.name)
		}
	}
	t.Logf("MEASURED: remove --force of an authority %s still presents a leaf of (times from the command's return):\n  %s", api.name, strings.Join(lines, "\n  "))

	// Once its agent goes on, the workload should replace its leaf (its
	// issuer is not the signing authority) within the re-issue window.
	// Whether it can is reported, not required: the issue asks only that
	// the failures be shown.
	api.agent.thaw()
	thawed := time.Now()
	recovered := ""
	for deadline := thawed.Add(m.reissue + 15*time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if e := api.trust(); e.leafAuthority() == id {
			recovered = time.Since(thawed).Round(10 * time.Millisecond).String()
			break
		}
	}
	if recovered == "" {
		t.Logf("MEASURED: after the forced removal, %s (agent running again) did not replace its leaf of the removed authority within %s; its agent's log:\n%s",
			api.name, m.reissue+15*time.Second, api.agent.tail(15))
	} else {
		m.waitCallsPass(15 * time.Second)
		t.Logf("MEASURED: after the forced removal, %s presented a leaf of %s %s after its agent went on (re-issue window %s), and its calls pass again",
			api.name, id, recovered, m.reissue)
	}
}

// firstFailure describes rs relative to t0: when the first failure and
// the last success started (signed offsets from t0, or "none"), how many
// failed, and the first failure's error.
func firstFailure(rs []result, t0 time.Time) (first, lastOK string, failed int, example error) {
	first, lastOK = "none", "none"
	for _, r := range rs {
		if r.err != nil {
			if failed == 0 {
				first, example = offset(r.start, t0), r.err
			}
			failed++
		} else {
			lastOK = offset(r.start, t0)
		}
	}
	return first, lastOK, failed, example
}

// offset is t - t0 with its sign, to the millisecond.
func offset(t, t0 time.Time) string {
	d := t.Sub(t0).Round(time.Millisecond)
	if d < 0 {
		return d.String()
	}
	return "+" + d.String()
}
