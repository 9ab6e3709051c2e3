package meshfile

import (
	"context"
	"strings"
	"testing"
)

// TestControlPlaneIdentityIsReserved: a workload in namespace
// bulwark-system with service account bulwark would get the control
// plane's own SPIFFE ID, which every agent trusts as its control plane.
// The file is refused, naming the field.
func TestControlPlaneIdentityIsReserved(t *testing.T) {
	body := header + `  workloads:
    - name: impostor-1
      namespace: bulwark-system
      serviceAccount: bulwark
      address: 10.0.0.9
`
	path := writeFile(t, body)
	_, err := Load(context.Background(), []string{path})
	if err == nil {
		t.Fatal("a workload with the control plane's identity was accepted")
	}
	want := path + ":9: Mesh m: spec.workloads[0].serviceAccount: service account bulwark in namespace bulwark-system is the control plane's own identity (spiffe://cluster.local/ns/bulwark-system/sa/bulwark); no workload may have it"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error:\n%v\nwant it to contain:\n%s", err, want)
	}

	// Either half alone is fine.
	for _, ok := range []string{
		"namespace: bulwark-system\n      serviceAccount: monitor",
		"namespace: demo\n      serviceAccount: bulwark",
	} {
		b := strings.Replace(body, "namespace: bulwark-system\n      serviceAccount: bulwark", ok, 1)
		if _, err := Load(context.Background(), []string{writeFile(t, b)}); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}
