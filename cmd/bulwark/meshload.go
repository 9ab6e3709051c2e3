package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/source/meshfile"
)

// errInterrupted is what a command returns when a signal ended its work.
var errInterrupted = errors.New("interrupted")

// loadMesh loads mesh files for a command, printing every problem to
// stderr, one a line. A load that ctx ended (SIGINT or SIGTERM, see main)
// is reported as interrupted, not as a problem of the files.
func loadMesh(ctx context.Context, paths []string, stderr io.Writer) (*model.State, error) {
	st, err := meshfile.Load(ctx, paths)
	if err == nil {
		return st, nil
	}
	if ctx.Err() != nil {
		return nil, errInterrupted
	}
	problems := meshfile.Errors(err)
	for _, p := range problems {
		fmt.Fprintln(stderr, p.Error())
	}
	return nil, fmt.Errorf("%d problem(s)", len(problems))
}
