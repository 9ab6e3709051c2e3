package main

import (
	"context"
	"fmt"
	"io"

	"github.com/bulwarkmesh/bulwark/source/meshfile"
)

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("validate", "FILE|DIR ...", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	st, err := meshfile.Load(fs.Args())
	if err != nil {
		problems := meshfile.Errors(err)
		for _, p := range problems {
			fmt.Fprintln(stderr, p.Error())
		}
		return fmt.Errorf("%d problem(s)", len(problems))
	}
	fmt.Fprintf(stdout, "ok: mesh %q, trust domain %s, %d services, %d workloads\n",
		st.Mesh.Name, st.Mesh.TrustDomain, len(st.Services), len(st.Workloads))
	return nil
}
