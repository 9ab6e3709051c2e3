package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
)

func runPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelp(args[0]) {
		return groupUsage(args, "Usage: bulwark policy check|explain|matrix [flags]", stderr)
	}
	switch args[0] {
	case "check":
		return runPolicyCheck(ctx, args[1:], stdout, stderr)
	case "explain":
		return runPolicyExplain(ctx, args[1:], stdout, stderr)
	case "matrix":
		return runPolicyMatrix(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "bulwark policy: unknown subcommand %q (check, explain, matrix)\n", args[0])
	return errUsage
}

// loadSnapshot loads mesh files into a store, printing every problem.
func loadSnapshot(ctx context.Context, paths []string, stderr io.Writer) (*model.Snapshot, error) {
	st, err := loadMesh(ctx, paths, stderr)
	if err != nil {
		return nil, err
	}
	store := model.NewStore()
	if _, err := store.ReplaceState(st); err != nil {
		return nil, err
	}
	return store.Snapshot(), nil
}

func atFlag(s string) (time.Time, error) {
	if s == "" {
		return time.Now(), nil
	}
	return time.Parse(time.DateOnly, s)
}

func runPolicyCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("policy check", "FILE|DIR ... [--strict]", stderr)
	strict := fs.Bool("strict", false, "fail (exit 1) on warnings too")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	snap, err := loadSnapshot(ctx, fs.Args(), stderr)
	if err != nil {
		return err
	}
	findings := authz.Lint(snap, time.Now())
	for _, f := range findings {
		fmt.Fprintln(stdout, "warning: "+f.String())
	}
	fmt.Fprintf(stdout, "%d access policies valid, %d warning(s)\n", len(snap.AccessPolicies()), len(findings))
	if *strict && len(findings) > 0 {
		return errors.New("warnings with --strict")
	}
	return nil
}

func runPolicyExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("policy explain", "--mesh FILE --from ID|NS/SA|unauthenticated --to SERVICE [--port N] [--method M] [--path P]", stderr)
	var mesh listFlag
	fs.Var(&mesh, "mesh", "mesh file or directory (repeatable; required)")
	from := fs.String("from", "", "the caller: spiffe://..., namespace/serviceaccount, or unauthenticated (required)")
	to := fs.String("to", "", "the service: name, namespace/name or name.namespace (required)")
	port := fs.Uint("port", 0, "service port (default: the service's first)")
	method := fs.String("method", "GET", "HTTP method")
	path := fs.String("path", "/", "HTTP path, as the caller sends it")
	at := fs.String("at", "", "evaluate at this date (YYYY-MM-DD), for expiring mTLS exceptions")
	exitCode := fs.Bool("exit-code", false, "exit 1 when any workload denies the request, or the sidecar rejects it")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(mesh) == 0 || *from == "" || *to == "" {
		fs.Usage()
		return errUsage
	}
	now, err := atFlag(*at)
	if err != nil {
		return fmt.Errorf("--at: %w", err)
	}
	snap, err := loadSnapshot(ctx, mesh, stderr)
	if err != nil {
		return err
	}
	peer, err := authz.ResolvePeer(*from, snap.Mesh().TrustDomain)
	if err != nil {
		return fmt.Errorf("--from %q: %w", *from, err)
	}
	svc, err := snap.ResolveService(*to)
	if err != nil {
		return err
	}
	sp := &svc.Ports[0]
	if *port != 0 {
		if sp = svc.Port(uint32(*port)); sp == nil {
			return fmt.Errorf("service %s has no port %d", svc.Key(), *port)
		}
	}
	who := peer
	if who == "" {
		who = authz.Unauthenticated
	}
	what := ""
	if sp.Protocol == model.ProtocolHTTP {
		what = fmt.Sprintf(" %s %s", *method, *path)
		norm, err := authz.NormalizePath(*path)
		if err != nil {
			fmt.Fprintf(stdout, "%s -> %s:%d%s\n  rejected with 400 before authorization: %v\n", who, svc.Host(), sp.Port, what, err)
			if *exitCode {
				return errors.New("rejected")
			}
			return nil
		}
		if norm != *path {
			what += fmt.Sprintf(" (normalized: %s)", norm)
		}
	}
	fmt.Fprintf(stdout, "%s -> %s:%d/%s%s\n", who, svc.Host(), sp.Port, sp.Protocol, what)
	results := authz.Explain(snap, now, peer, svc, sp, *method, *path)
	if len(results) == 0 {
		fmt.Fprintln(stdout, "  no workload backs this service")
	}
	denied := false
	for _, r := range results {
		verdict := "ALLOW"
		if !r.Decision.Allowed {
			verdict, denied = "DENY", true
		}
		by := ""
		if r.Decision.Rule != "" {
			by = " by " + r.Decision.Rule
		}
		fmt.Fprintf(stdout, "  %s (port %d, mTLS %s): %s%s\n    %s\n", r.Workload, r.Port, r.Mode, verdict, by, r.Decision.Reason)
		if peer != "" && r.Decision.Peer == "" {
			fmt.Fprintln(stdout, "    (mTLS is disabled on this port: the caller's identity does not reach the sidecar)")
		}
		if d := r.Decision.DryRun; d != nil {
			v := "ALLOW"
			if !d.Allowed {
				v = "DENY"
			}
			fmt.Fprintf(stdout, "    dry run: with dry-run policies enforced it would be %s by %s\n", v, d.Rule)
		}
	}
	if denied && *exitCode {
		return errors.New("denied")
	}
	return nil
}

func runPolicyMatrix(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("policy matrix", "--mesh FILE [--format table|dot]", stderr)
	var mesh listFlag
	fs.Var(&mesh, "mesh", "mesh file or directory (repeatable; required)")
	format := fs.String("format", "table", "table, or dot (Graphviz)")
	at := fs.String("at", "", "evaluate at this date (YYYY-MM-DD)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(mesh) == 0 || (*format != "table" && *format != "dot") {
		fs.Usage()
		return errUsage
	}
	now, err := atFlag(*at)
	if err != nil {
		return fmt.Errorf("--at: %w", err)
	}
	snap, err := loadSnapshot(ctx, mesh, stderr)
	if err != nil {
		return err
	}
	m := authz.BuildMatrix(snap, now)
	td := snap.Mesh().TrustDomain
	short := func(id string) string {
		if ns, sa, ok := model.ParseIdentityString(id, td); ok {
			return ns + "/" + sa
		}
		return id
	}
	if *format == "dot" {
		fmt.Fprintln(stdout, "digraph access {\n  rankdir=LR;\n  node [shape=box];")
		for i, c := range m.Callers {
			for j, t := range m.Targets {
				switch m.Cells[i][j] {
				case authz.ReachAll:
					fmt.Fprintf(stdout, "  %q -> %q;\n", short(c), t.String())
				case authz.ReachSome:
					fmt.Fprintf(stdout, "  %q -> %q [style=dashed, label=\"some requests\"];\n", short(c), t.String())
				}
			}
		}
		fmt.Fprintln(stdout, "}")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	header := []string{"CALLER \\ SERVICE"}
	for _, t := range m.Targets {
		header = append(header, fmt.Sprintf("%s/%s", t.String(), t.Proto))
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for i, c := range m.Callers {
		row := []string{short(c)}
		for j := range m.Targets {
			row = append(row, m.Cells[i][j].String())
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nALLOW: every request; PARTIAL: some methods, paths or workloads; DENY: none.")
	return nil
}
