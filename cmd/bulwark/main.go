// Command bulwark is Bulwark's one binary: the control plane (serve), a
// whole local mesh (up), sidecar bootstraps, mesh file validation and the
// demo app.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
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
		{"ca", "manage the CA: init, issue, status, rotate, revoke and the rest of the trust lifecycle", runCA},
		{"token", "create a one-time join token for a workload", runToken},
		{"policy", "check access policies, explain a decision, print who can call whom", runPolicy},
		{"mtls", "list the mTLS exceptions: everything weaker than STRICT", runMTLS},
		{"proxy-status", "ask a running control plane which proxies run what they were sent, and their certificates", runProxyStatus},
		{"iptables", "set up transparent capture in this network namespace (what an init container runs)", runIPTables},
		{"bootstrap", "print the Envoy bootstrap for a workload's sidecar", runBootstrap},
		{"validate", "check mesh files and report every problem", runValidate},
		{"demo-app", "run the demo app (HTTP echo, /call/<upstream>, TCP line echo)", runDemoApp},
		{"version", "print the version and the modules it was built from", runVersion},
	}
}

// errUsage means the command line was wrong; the usage was already
// printed to stderr.
var errUsage = errors.New("usage")

// helpRequested is what a command returns when asked for its usage
// (-h or --help): run prints usage to stdout and exits 0.
type helpRequested struct{ usage string }

func (*helpRequested) Error() string { return "help requested" }

// isHelp reports whether arg asks for help, as the flag package reads it.
func isHelp(arg string) bool {
	switch arg {
	case "-h", "--h", "-help", "--help":
		return true
	}
	return false
}

// groupUsage answers a command made of subcommands when args names none
// of them: asked for help, with usage for stdout; otherwise it prints
// usage to stderr and returns errUsage.
func groupUsage(args []string, usage string, stderr io.Writer) error {
	if len(args) > 0 && isHelp(args[0]) {
		return &helpRequested{usage: usage + "\n"}
	}
	fmt.Fprintln(stderr, usage)
	return errUsage
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	if isHelp(args[0]) || args[0] == "help" {
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		var help *helpRequested
		switch {
		case err == nil:
			return 0
		case errors.As(err, &help):
			fmt.Fprint(stdout, help.usage)
			return 0
		case errors.Is(err, errUsage):
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

// newFlags returns a flag set for the command name whose usage goes to
// stderr, except when parse finds -h or --help (see parse).
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("bulwark "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nFlags:\n", strings.TrimSpace("Usage: bulwark "+name+" "+synopsis))
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args into fs. Asked for help, it returns a helpRequested
// with fs's usage, for run to print on stdout. A parse error is reported
// with the usage on fs's output, stderr, and returned as errUsage.
func parse(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return &helpRequested{usage: buf.String()}
	case err != nil:
		_, _ = out.Write(buf.Bytes())
		return errUsage
	}
	return nil
}

// runVersion prints the version, then what the binary was built from as
// go version -m lists it: the Go version, the main module, every module
// compiled in with its version and checksum, and the build settings
// (with the version control revision when the build recorded one). An
// SBOM of the same binary (make sbom) lists the same modules.
func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if err := parse(newFlags("version", "", stderr), args); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "bulwark", version)
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintln(stdout, "(the binary holds no build information)")
		return nil
	}
	fmt.Fprint(stdout, info.String())
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
