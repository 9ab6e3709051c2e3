package trust

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRevokeWorkload revokes one workload under traffic: every peer
// refuses its certificate on new connections, in both directions, within
// a measured time; the calls between the other workloads never fail; its
// renewal is refused; unrevoking it restores all of it. Connections
// established before the revocation (kept alive, never handshaked again)
// are closed by the drain the control plane orders once the peers hold
// the CRL, and refused from then on too.
func TestRevokeWorkload(t *testing.T) {
	m := startMesh(t, options{})
	api := m.workload("api-1")
	if err := api.renew(); err != nil {
		t.Fatalf("%s cannot renew before the revocation, so the refusal below would prove nothing: %v", api.name, err)
	}
	tr := m.startTraffic(t)
	start := time.Now()
	time.Sleep(time.Second)

	peers := without(m.workloads, api)
	refusals0 := map[string]int{}
	for _, w := range peers {
		refusals0[w.name] = w.verifyErrors()
	}
	revoking := time.Now()
	out, took := m.mustCA(30*time.Second, "revoke", "--workload", api.key(), "--reason", "test: key compromised")
	revoked := time.Now()
	t.Logf("bulwark ca revoke --workload %s (%s):\n%s", api.key(), took.Round(time.Millisecond), out)

	// Every new connection to or from api-1 is refused, by frontend-1
	// (api-1 as a server) and by backend-1 (api-1 as a client), within
	// seconds (the bound) and from then on. The kept-alive
	// connections are watched for the whole observation.
	const within = 5 * time.Second
	// Kept-alive connections close at the drain: ordered once every
	// peer holds the CRL, then at most Envoy's drain time (5s).
	const keptWithin = 8 * time.Second
	const observe = 10 * time.Second
	time.Sleep(time.Until(revoked.Add(observe)))
	end := time.Now()

	var measured []string
	for _, p := range m.pairs() {
		if !p.involves(api) {
			continue
		}
		for _, k := range []kind{fresh, keepAlive} {
			s := tr.stream(p, k)
			// From the moment the command started: the revocation may
			// reach the proxies before the command has returned.
			rs := s.between(revoking, end)
			first, lastOK, nf, example := firstFailure(rs, revoked)
			measured = append(measured, fmt.Sprintf("%s: %d of %d requests refused from the revoke's start to %s after it returned; first refused at %s, last success at %s; e.g. %v",
				s, nf, len(rs), observe, first, lastOK, example))
			bound := within
			if k == keepAlive {
				bound = keptWithin
			}
			if rs := s.between(revoking, revoked.Add(bound)); !refusedSince(rs) {
				t.Errorf("%s: requests are not refused within %s of the revoke", s, bound)
			} else if !refusedSince(s.between(revoked, end)) {
				t.Errorf("%s: a request succeeded after the first refusal", s)
			}
		}
	}
	// The refusals are the peers' own: their Envoys failed to verify
	// api-1's certificate (frontend-1 as a client, backend-1 as a server).
	for _, w := range peers {
		if n := w.verifyErrors() - refusals0[w.name]; n == 0 {
			t.Errorf("the Envoy of %s refused no certificate after %s was revoked", w.name, api.key())
		} else {
			t.Logf("the Envoy of %s refused %d certificates (ssl.fail_verify_error) after the revoke", w.name, n)
		}
	}
	t.Logf("MEASURED: revoke --workload %s (the command took %s; times from its return, requests every %s per stream):\n  %s", api.key(), took.Round(time.Millisecond), interval, strings.Join(measured, "\n  "))
	tr.requireNoFailures(t, "calls not involving "+api.name, start, end, func(s *stream) bool { return !s.pair.involves(api) })

	err := api.renew()
	t.Logf("renewal of revoked %s: %v", api.name, err)
	if err == nil {
		t.Errorf("the revoked %s renewed its certificate", api.key())
	}
	if st := m.status(); len(st.GetRevocations()) != 1 || st.GetRevocations()[0].GetValue() != api.key() {
		t.Errorf("status lists revocations %v, want the one of %s", st.GetRevocations(), api.key())
	}

	out, took = m.mustCA(30*time.Second, "unrevoke", "--workload", api.key())
	unrevoked := time.Now()
	t.Logf("bulwark ca unrevoke --workload %s (%s):\n%s", api.key(), took.Round(time.Millisecond), out)
	passAgain := map[string]time.Duration{}
	deadline := unrevoked.Add(within)
	for {
		for _, p := range m.pairs() {
			s := tr.stream(p, fresh)
			if _, ok := passAgain[s.String()]; ok || !p.involves(api) {
				continue
			}
			rs := s.between(unrevoked, time.Now())
			for _, r := range rs {
				if r.err == nil {
					passAgain[s.String()] = r.start.Sub(unrevoked)
					break
				}
			}
		}
		if len(passAgain) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 calls of %s pass again %s after the unrevoke: %v", len(passAgain), api.name, within, passAgain)
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.waitCallsPass(within)
	settled := time.Now()
	time.Sleep(2 * time.Second)
	tr.stop()
	tr.requireNoFailures(t, "every call after the unrevoke settled", settled, time.Now(), nil)
	if err := api.renew(); err != nil {
		t.Errorf("%s cannot renew after the unrevoke: %v", api.name, err)
	}
	var again []string
	for s, d := range passAgain {
		again = append(again, fmt.Sprintf("%s +%s", s, d.Round(time.Millisecond)))
	}
	t.Logf("MEASURED: unrevoke --workload %s: new connections pass again: %s", api.key(), strings.Join(again, ", "))
}

// refusedSince reports whether rs has a failure and no success after its
// first failure.
func refusedSince(rs []result) bool {
	failed := false
	for _, r := range rs {
		switch {
		case r.err != nil:
			failed = true
		case failed:
			return false
		}
	}
	return failed
}
