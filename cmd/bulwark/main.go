// Command bulwark is Bulwark's one binary: the control plane (serve), a
// whole local mesh (up), sidecar bootstraps, mesh file validation and the
// demo app.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the control plane: ADS for sidecars from a mesh file", runServe},
		{"up", "run a local mesh: control plane, demo apps and real Envoy sidecars on loopback", runUp},
		{"agent", "run beside Envoy: get the workload's certificate, serve it over SDS, renew it, run Envoy", runAgent},
		{"ca", "manage the CA: init, issue", runCA},
		{"token", "create a one-time join token for a workload", runToken},
		{"policy", "check access policies, explain a decision, print who can call whom", runPolicy},
		{"mtls", "list the mTLS exceptions: everything weaker than STRICT", runMTLS},
		{"proxy-status", "ask a running control plane which proxies run what they were sent, and their certificates", runProxyStatus},
		{"iptables", "set up transparent capture in this network namespace (what an init container runs)", runIPTables},
		{"bootstrap", "print the Envoy bootstrap for a workload's sidecar", runBootstrap},
		{"validate", "check mesh files and report every problem", runValidate},
		{"demo-app", "run the demo app (HTTP echo, /call/<upstream>, TCP line echo)", runDemoApp},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			fmt.Fprintln(stdout, "bulwark", version)
			return nil
		}},
	}
}

// errUsage means the command line was wrong; the usage was already printed.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
			return 2
		default:
			fmt.Fprintf(stderr, "bulwark %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "bulwark: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Bulwark: mTLS and service-to-service authorization for Envoy sidecars, without a whole mesh.")
	fmt.Fprintln(w, "\nUsage: bulwark <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'bulwark <command> -h' for a command's flags.")
}

// newFlags returns a flag set that prints its usage to stderr.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("bulwark "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: bulwark %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, turning a parse error into errUsage.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func newLogger(stderr io.Writer, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv})), nil
}
