package trust

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// TestHarness checks the harness itself: every call of the topology goes
// through under continuous traffic, and every Envoy trusts the mesh's
// root and presents a leaf of its one authority.
func TestHarness(t *testing.T) {
	m := startMesh(t, options{})
	tr := m.startTraffic(t)
	start := time.Now()
	time.Sleep(3 * time.Second)
	tr.requireNoFailures(t, "steady state", start, time.Now(), nil)
	b, err := os.ReadFile(filepath.Join(m.caDir, ca.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	roots, err := pemutil.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	// Every fresh-connection request was a full handshake at the callee.
	var freshReqs int
	for _, s := range tr.streams {
		if s.kind == fresh {
			freshReqs += len(s.between(start, time.Now()))
		}
	}
	if hs := m.freshHandshakes(); hs < freshReqs {
		t.Errorf("the callees' sidecars counted %d TLS handshakes on their TCP ports, want at least the %d fresh-connection requests", hs, freshReqs)
	}
	for _, w := range m.workloads {
		e := w.trust()
		t.Logf("%s: %s", w.name, e)
		if !e.trusts(roots[0]) {
			t.Errorf("%s does not trust the mesh's root", w.name)
		}
	}
}

func TestHarnessRenew(t *testing.T) {
	m := startMesh(t, options{})
	for _, w := range m.workloads {
		if err := w.renew(); err != nil {
			t.Errorf("%s: %v", w.name, err)
		}
	}
}
