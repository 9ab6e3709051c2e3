package e2e

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/bulwarkmesh/bulwark/internal/testfs"
	"github.com/bulwarkmesh/bulwark/internal/testlog"
	"github.com/bulwarkmesh/bulwark/localmesh"
)

// startMesh runs a local mesh of real Envoys from the mesh file text,
// stopped when the test ends.
func startMesh(t *testing.T, envoyBin, mesh string) *localmesh.Mesh {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	testfs.Replace(t, path, mesh)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m, err := localmesh.Start(ctx, localmesh.Config{
		MeshPaths: []string{path}, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0",
		EnvoyBin: envoyBin, WorkDir: filepath.Join(dir, "work"), Logger: testlog.New(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return m
}
