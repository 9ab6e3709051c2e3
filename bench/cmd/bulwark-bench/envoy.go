package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bulwarkmesh/bulwark/localmesh"
)

// envoyMesh writes a mesh file of n workloads, each with a real Envoy,
// backing a service of its own and calling every service. Odd
// generations add an access policy to every service: a change to every
// sidecar's inbound listener.
func envoyMesh(path string, n, generation int) error {
	var b strings.Builder
	b.WriteString("apiVersion: bulwark.dev/v1alpha1\nkind: Mesh\nmetadata: {name: bench}\nspec:\n  trustDomain: bench.local\n  services:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    - {name: svc-%d, namespace: bench, ports: [{name: http, port: 8080, protocol: http}]}\n", i)
	}
	b.WriteString("  workloads:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "    - name: proxy-%d\n      namespace: bench\n      serviceAccount: svc-%d\n      address: 127.0.3.%d\n      localAddress: 127.0.4.%d\n      services: [svc-%d]\n      upstreams:\n",
			i, i, i+1, i+1, i)
		for j := 0; j < n; j++ {
			fmt.Fprintf(&b, "        - {service: svc-%d, localPort: %d}\n", j, 20000+j)
		}
	}
	if generation%2 == 1 {
		for i := 0; i < n; i++ {
			fmt.Fprintf(&b, "---\napiVersion: bulwark.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: svc-%d, namespace: bench}\nspec:\n  selector: {service: svc-%d}\n  action: ALLOW\n  rules:\n    - from: [{namespaces: [bench]}]\n      to: [{methods: [GET]}]\n", i, i)
		}
	}
	// Written whole, then renamed: the watcher never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// envoyFigure: real Envoys (the pinned binary), each with its agent,
// converging after a change to the mesh file, measured from the write
// until every one has ACKed the new listeners.
func (h *harness) envoyFigure() ([]Figure, error) {
	n, reps := 25, h.o.reps
	if h.o.short {
		n, reps = 3, 1
	}
	fmt.Printf("\n== %d real Envoys\n", n)
	dir, err := os.MkdirTemp("", "bulwark-bench-envoy-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	meshDir := filepath.Join(dir, "mesh")
	if err := os.MkdirAll(meshDir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(meshDir, "mesh.yaml")
	if err := envoyMesh(path, n, 0); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(h.o.out, "envoy-mesh.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	m, err := localmesh.Start(ctx, localmesh.Config{MeshPaths: []string{meshDir}, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0",
		EnvoyBin: h.o.envoyBin, WorkDir: filepath.Join(dir, "work"), ReadyTimeout: 2 * time.Minute,
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(logf), &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return nil, fmt.Errorf("real Envoys: %w", err)
	}
	defer m.Stop()
	ready := time.Since(start)
	srv := m.ControlPlane().Server
	var runs []float64
	for k := 1; k <= reps; k++ {
		before := map[string]string{}
		for _, p := range srv.Proxies() {
			before[p.Node] = p.Types["lds"].AckedVersion
		}
		if len(before) != n {
			return nil, fmt.Errorf("%d of %d Envoys connected", len(before), n)
		}
		t0 := time.Now()
		if err := envoyMesh(path, n, k); err != nil {
			return nil, err
		}
		deadline := t0.Add(time.Minute)
		for {
			done := 0
			for _, p := range srv.Proxies() {
				if p.Synced && p.Types["lds"].AckedVersion != before[p.Node] {
					done++
				}
			}
			if done == n {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("change %d: %d of %d Envoys ACKed within a minute", k, done, n)
			}
			time.Sleep(2 * time.Millisecond)
		}
		runs = append(runs, time.Since(t0).Seconds())
		fmt.Printf("change %d: %.3fs\n", k, runs[len(runs)-1])
	}
	figs := []Figure{figure("real_envoy_convergence", "s",
		fmt.Sprintf("%d real Envoys (%d clusters each) with their agents: from writing the mesh file until every Envoy ACKed the new listeners (the file watcher's and the server's debounce included); all were ready %.1fs after start",
			n, n+1, ready.Seconds()), runs, nil, false)}
	printFigures(figs)
	return figs, nil
}
