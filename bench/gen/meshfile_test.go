package gen

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/bulwarkmesh/bulwark/source/meshfile"
)

// TestTheLargestMeshFitsTheMeshFileLimits: the mesh file limits leave room
// for the largest mesh the load harness runs, 10,000 services (with a
// sidecar workload each, as many as it connects at most): its Mesh
// document fits twice in MaxFileSize, and with an AccessPolicy per service
// it fits twice in MaxTotalSize. It loads.
func TestTheLargestMeshFitsTheMeshFileLimits(t *testing.T) {
	spec := Spec{Services: 10000, Proxies: 10000}
	var mesh, all bytes.Buffer
	if err := spec.MeshFile(&mesh, false); err != nil {
		t.Fatal(err)
	}
	if err := spec.MeshFile(&all, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("the Mesh document: %.1f MiB; with the policies: %.1f MiB", float64(mesh.Len())/(1<<20), float64(all.Len())/(1<<20))
	if 2*mesh.Len() > meshfile.MaxFileSize {
		t.Errorf("the Mesh document of %d services has %d bytes: less than twice that fits in MaxFileSize (%d)", spec.Services, mesh.Len(), meshfile.MaxFileSize)
	}
	if 2*all.Len() > meshfile.MaxTotalSize {
		t.Errorf("with a policy per service it has %d bytes: less than twice that fits in MaxTotalSize (%d)", all.Len(), meshfile.MaxTotalSize)
	}
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, all.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := meshfile.Load(context.Background(), []string{path})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != spec.Services || len(st.Workloads) != spec.Proxies || len(st.Access) != spec.Services {
		t.Errorf("loaded %d services, %d workloads and %d access policies, want %d, %d and %d",
			len(st.Services), len(st.Workloads), len(st.Access), spec.Services, spec.Proxies, spec.Services)
	}
}
