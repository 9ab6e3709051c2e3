package main

import (
	"context"
	"fmt"
	"io"
)

func runValidate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("validate", "FILE|DIR ...", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	st, err := loadMesh(ctx, fs.Args(), stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ok: mesh %q, trust domain %s, %d services, %d workloads\n",
		st.Mesh.Name, st.Mesh.TrustDomain, len(st.Services), len(st.Workloads))
	return nil
}
