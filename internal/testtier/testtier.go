// Package testtier sorts tests into the project's two tiers, for tests.
//
// The unit tier, `go test -short ./...` (make test-unit), runs without
// Envoy, root or an API server: by design it leaves out every test that
// needs a real part (the real Envoy, root for network namespaces and
// iptables, the real kube-apiserver). The integration tier is the same tests without -short
// (make test runs both): there nothing is left out, and a test whose real
// part is missing fails, never skips.
//
// The helpers that find the real parts (envoytest, and the TestMain of
// test/netns and test/kube with the helper each of their tests calls
// first) call Needs, which never skips without -short.
package testtier

import (
	"strings"
	"testing"
)

// The real parts, as skip messages name them.
const (
	Envoy     = "the real Envoy"
	Root      = "root (network namespaces and iptables)"
	APIServer = "the real kube-apiserver"
)

// Needs skips t in the unit tier (-short), naming the real parts it
// needs, whether or not they are there: the unit tier runs the same tests
// on every machine. Without -short it does nothing; finding the parts,
// and failing when one is missing, is the caller's job.
func Needs(t testing.TB, parts ...string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("integration tier: needs %s; run make test", list(parts))
	}
}

// list joins parts as a sentence does: "a", "a and b", "a, b and c".
func list(parts []string) string {
	if len(parts) < 2 {
		return strings.Join(parts, "")
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}
