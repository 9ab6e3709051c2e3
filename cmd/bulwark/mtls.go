package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

// runMTLS lists every port of every workload that is not STRICT, and
// every configured weakening that no longer applies because its exception
// expired: the list an auditor asks for.
func runMTLS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "exceptions" {
		return groupUsage(args, "Usage: bulwark mtls exceptions --mesh FILE|DIR", stderr)
	}
	fs := newFlags("mtls exceptions", "--mesh FILE|DIR [--mesh ...]", stderr)
	var mesh listFlag
	fs.Var(&mesh, "mesh", "mesh file or directory (repeatable)")
	at := fs.String("at", "", "evaluate at this date (YYYY-MM-DD) instead of now")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if len(mesh) == 0 {
		fs.Usage()
		return errUsage
	}
	now := time.Now()
	if *at != "" {
		t, err := time.Parse(time.DateOnly, *at)
		if err != nil {
			return fmt.Errorf("--at: %w", err)
		}
		now = t
	}
	st, err := loadMesh(ctx, mesh, stderr)
	if err != nil {
		return err
	}
	type row struct{ workload, port, mode, source, reason, owner, expires, state string }
	var rows []row
	for _, x := range model.MTLSExceptions(st, now) {
		d := x.Decision
		r := row{workload: x.Workload, port: fmt.Sprint(x.Port), mode: string(d.Mode), source: d.Source, reason: "-", owner: "-", expires: "-", state: "active"}
		if e := d.Exception; e != nil {
			r.reason = e.Reason
			if e.Owner != "" {
				r.owner = e.Owner
			}
			if e.Expires != "" {
				r.expires = e.Expires
			}
		}
		if d.Expired {
			r.state = "EXPIRED: enforced as STRICT"
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		fmt.Fprintln(stdout, "no exceptions: every port of every workload is STRICT")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKLOAD\tPORT\tMODE\tSET BY\tREASON\tOWNER\tEXPIRES\tSTATE")
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join([]string{r.workload, r.port, r.mode, r.source, r.reason, r.owner, r.expires, r.state}, "\t"))
	}
	return tw.Flush()
}
