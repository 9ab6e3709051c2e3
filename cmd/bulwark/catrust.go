package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// The trust lifecycle commands talk to a running control plane's admin
// socket (TrustAdmin); `ca status --dir` reads a CA directory instead.

// defaultSocket is where the CLI looks for the admin socket: the
// environment's BULWARK_ADMIN_SOCKET, else Kubernetes mode's default. In
// file mode the socket is <ca-dir>/admin.sock.
func defaultSocket() string {
	return envOr("BULWARK_ADMIN_SOCKET", controlplane.DefaultKubeAdminSocket)
}

// adminFlags are the flags every lifecycle command takes.
type adminFlags struct {
	socket  *string
	as      *string
	timeout *time.Duration
}

func bindAdmin(fs *flag.FlagSet) adminFlags {
	af := bindSocket(fs)
	af.as = fs.String("as", "", "a note kept with your user in the audit trail: your name, a ticket")
	return af
}

// bindSocket binds the flags of a command that changes nothing.
func bindSocket(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		socket: fs.String("socket", defaultSocket(), "the control plane's admin socket (file mode: <ca-dir>/admin.sock; env BULWARK_ADMIN_SOCKET)"),
		timeout: fs.Duration("timeout", 30*time.Second,
			"give up on the control plane after this long"),
	}
}

// dialAdmin connects to the admin socket. The kernel tells the control
// plane who we are; nothing here is a credential.
func dialAdmin(path string) (cav1.TrustAdminClient, func(), error) {
	if _, err := os.Stat(path); err != nil {
		return nil, nil, fmt.Errorf("admin socket %s: %w (is the control plane running? give --socket: in file mode it is <ca-dir>/admin.sock)", path, err)
	}
	// Calls wait for the control plane (within --timeout) rather than
	// fail at once: one restarting, killed in the middle of a rotation
	// say, answers again in a moment.
	c, conn, err := controlplane.DialAdmin(path, grpc.WithDefaultCallOptions(grpc.WaitForReady(true)))
	if err != nil {
		return nil, nil, err
	}
	return c, func() { conn.Close() }, nil
}

// parseInterspersed parses args into fs, allowing flags after the
// positional arguments (`activate ID --force`), and returns those.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// adminError turns a refusal of the control plane into what an operator
// reads: the step refused and why, the laggards one per line, and what
// --force would break.
func adminError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return fmt.Errorf("the control plane does not answer on its admin socket (is it running? --timeout waits longer): %s", st.Message())
	case codes.PermissionDenied:
		return fmt.Errorf("refused: %s", st.Message())
	}
	for _, d := range st.Details() {
		g, ok := d.(*cav1.GateRefusal)
		if !ok {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s refused: %s", g.GetStep(), g.GetAuthority(), g.GetWhy())
		if len(g.GetLaggards()) > 0 {
			fmt.Fprintf(&b, "\nheld up by (%d):", len(g.GetLaggards()))
			for _, l := range g.GetLaggards()[:min(len(g.GetLaggards()), 50)] {
				fmt.Fprintf(&b, "\n  %s", l)
			}
			if n := len(g.GetLaggards()) - 50; n > 0 {
				fmt.Fprintf(&b, "\n  and %d more", n)
			}
		}
		if g.GetBreaks() != "" {
			fmt.Fprintf(&b, "\n--force overrides this, and breaks: %s", g.GetBreaks())
		}
		return errors.New(b.String())
	}
	return errors.New(st.Message())
}

// printChange prints what a step recorded; a forced step says what it
// breaks.
func printChange(out io.Writer, what string, resp *cav1.ChangeResponse) {
	fmt.Fprintf(out, "%s; bundle sequence now %d\n", what, resp.GetSequence())
	for _, e := range resp.GetEvents() {
		controlplane.WriteEvent(out, e)
		if e.GetForced() {
			fmt.Fprintf(out, "FORCED: a gate refused this step and --force overrode it. It breaks: %s\n", e.GetDetail())
		}
	}
}

func runCAStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca status", "[--json] [--socket PATH | --dir DIR]", stderr)
	af := bindSocket(fs)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	dir := fs.String("dir", "", "read this CA directory instead of asking a running control plane (nothing is known of proxies then)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return errUsage
	}
	var st *cav1.TrustStatus
	if *dir != "" {
		s, err := trust.NewDirStore(*dir, spiffeid.TrustDomain{}).Load(ctx)
		if err != nil {
			return err
		}
		st = controlplane.TrustStatusOf(s, nil)
	} else {
		c, closeConn, err := dialAdmin(*af.socket)
		if err != nil {
			return err
		}
		defer closeConn()
		ctx, cancel := context.WithTimeout(ctx, *af.timeout)
		defer cancel()
		if st, err = c.Status(ctx, &cav1.StatusRequest{}); err != nil {
			return adminError(err)
		}
	}
	if *asJSON {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", UseProtoNames: true}.Marshal(st)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, string(b))
		return err
	}
	controlplane.WriteTrustStatus(stdout, st, time.Now())
	return nil
}

// adminStep runs one mutating call with the common flags.
func adminStep(ctx context.Context, af adminFlags, call func(ctx context.Context, c cav1.TrustAdminClient) error) error {
	c, closeConn, err := dialAdmin(*af.socket)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, *af.timeout)
	defer cancel()
	if err := call(ctx, c); err != nil {
		return adminError(err)
	}
	return nil
}

func runCAPrepare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca prepare", "[--kind intermediate|root] | --cert FILE --key FILE [--chain FILE] [--root FILE]", stderr)
	af := bindAdmin(fs)
	kind := fs.String("kind", "", "mint a new authority: intermediate (under the active root, whose key must be held) or root (default intermediate)")
	cert := fs.String("cert", "", "hand in an authority: its signing certificate (PEM; it may be followed by its chain)")
	key := fs.String("key", "", "the signing certificate's private key (PEM)")
	chain := fs.String("chain", "", "certificates between the signing certificate and the root (PEM)")
	root := fs.String("root", "", "the root it chains to, when it is not the active authority's (PEM)")
	if err := parse(fs, args); err != nil {
		return err
	}
	handIn := *cert != "" || *key != ""
	if fs.NArg() != 0 || (handIn && *kind != "") || (handIn && (*cert == "" || *key == "")) {
		fmt.Fprintln(stderr, "bulwark ca prepare: give --kind to mint, or --cert and --key to hand in")
		fs.Usage()
		return errUsage
	}
	req := &cav1.PrepareRequest{Operator: &cav1.Operator{As: *af.as}}
	if handIn {
		for _, f := range []struct {
			flag, path string
			dst        *[]byte
		}{{"cert", *cert, &req.CertPem}, {"key", *key, &req.KeyPem}, {"chain", *chain, &req.ChainPem}, {"root", *root, &req.RootPem}} {
			if f.path == "" {
				continue
			}
			b, err := readBounded(f.path, 1<<20)
			if err != nil {
				return err
			}
			// Checked here too, so that a mistake names the file; the
			// control plane checks everything again.
			if f.flag == "key" {
				_, err = pemutil.ParseKey(b)
			} else {
				_, err = pemutil.ParseCerts(b)
			}
			if err != nil {
				return fmt.Errorf("--%s %s: %w", f.flag, f.path, err)
			}
			*f.dst = b
		}
	} else {
		req.Kind = *kind
		if req.Kind == "" {
			req.Kind = "intermediate"
		}
	}
	return adminStep(ctx, af, func(ctx context.Context, c cav1.TrustAdminClient) error {
		resp, err := c.Prepare(ctx, req)
		if err != nil {
			return err
		}
		printChange(stdout, fmt.Sprintf("authority %s prepared: its root is in the bundle; activate it once every proxy holds it (bulwark ca activate %s)",
			resp.GetAuthority(), resp.GetAuthority()), resp)
		return nil
	})
}

// runCAPhase is activate, retire and remove: one authority, perhaps forced.
func runCAPhase(step string) func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		fs := newFlags("ca "+step, "ID [--force]", stderr)
		af := bindAdmin(fs)
		force := fs.Bool("force", false, "take the step although its gate refuses it (it says what that breaks, and is recorded)")
		reason := fs.String("reason", "", "why, for the audit trail")
		pos, err := parseInterspersed(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			fs.Usage()
			return errUsage
		}
		req := &cav1.AuthorityRequest{Id: pos[0], Operator: &cav1.Operator{As: *af.as, Force: *force, Reason: *reason}}
		return adminStep(ctx, af, func(ctx context.Context, c cav1.TrustAdminClient) error {
			var resp *cav1.ChangeResponse
			var err error
			switch step {
			case "activate":
				resp, err = c.Activate(ctx, req)
			case "retire":
				resp, err = c.Retire(ctx, req)
			default:
				resp, err = c.Remove(ctx, req)
			}
			if err != nil {
				return err
			}
			printChange(stdout, fmt.Sprintf("%s %s done", step, resp.GetAuthority()), resp)
			return nil
		})
	}
}

func runCARotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca rotate", "[--kind intermediate|root | --to ID] [--wait] [--force] | --cancel", stderr)
	af := bindAdmin(fs)
	kind := fs.String("kind", "", "mint the replacement: intermediate (a new one under the same root) or root (a new root and intermediate); "+
		"default: the newest prepared authority if there is one (bulwark ca prepare), else a new intermediate")
	to := fs.String("to", "", "rotate to this prepared authority (one handed in with bulwark ca prepare --cert) instead of minting")
	wait := fs.Bool("wait", false, "follow the rotation until it is done, printing each step and what it waits for")
	waitFor := fs.Duration("wait-timeout", 0, "with --wait: give up waiting after this long (0: never)")
	force := fs.Bool("force", false, "force every gate of the rotation (each forced step is recorded with what it breaks)")
	reason := fs.String("reason", "", "why, for the audit trail")
	cancelRot := fs.Bool("cancel", false, "forget the rotation in progress (what it did stays done: a prepared authority stays prepared, an activated one active)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 || (*kind != "" && *to != "") || (*cancelRot && (*kind != "" || *to != "" || *wait || *force)) {
		fs.Usage()
		return errUsage
	}
	c, closeConn, err := dialAdmin(*af.socket)
	if err != nil {
		return err
	}
	defer closeConn()
	if *cancelRot {
		callCtx, cancel := context.WithTimeout(ctx, *af.timeout)
		defer cancel()
		resp, err := c.CancelRotation(callCtx, &cav1.CancelRotationRequest{Operator: &cav1.Operator{As: *af.as, Reason: *reason}})
		if err != nil {
			return adminError(err)
		}
		printChange(stdout, "rotation cancelled", resp)
		return nil
	}
	callCtx, cancel := context.WithTimeout(ctx, *af.timeout)
	resp, err := c.Rotate(callCtx, &cav1.RotateRequest{Kind: *kind, Target: *to, Operator: &cav1.Operator{As: *af.as, Force: *force, Reason: *reason}})
	cancel()
	if err != nil {
		return adminError(err)
	}
	r := resp.GetRotation()
	if resp.GetAttached() {
		fmt.Fprintf(stdout, "a %s rotation of %s is in progress already (step %s, started by %s); following it\n", r.GetKind(), r.GetOld(), r.GetStep(), r.GetBy())
	} else {
		to := ""
		if r.GetTarget() != "" {
			to = " to " + r.GetTarget()
		}
		fmt.Fprintf(stdout, "%s rotation of %s%s started\n", r.GetKind(), r.GetOld(), to)
		for _, e := range resp.GetEvents() {
			controlplane.WriteEvent(stdout, e)
		}
	}
	if !*wait {
		if !resp.GetAttached() {
			fmt.Fprintln(stdout, "the control plane drives it one gated step at a time; follow it with bulwark ca status, or bulwark ca rotate --wait")
		}
		return nil
	}
	if *waitFor > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *waitFor)
		defer cancel()
	}
	return followRotation(ctx, c, r, resp.GetEvents(), stdout, *af.timeout)
}

// followRotation polls the status until the rotation r is done, printing
// each step once and what it waits for whenever that changes. While the
// control plane does not answer (restarting), it says so and keeps
// trying: the rotation is stored, and resumes.
func followRotation(ctx context.Context, c cav1.TrustAdminClient, r *cav1.TrustRotation, seenEvents []*cav1.TrustEvent, out io.Writer, timeout time.Duration) error {
	old, lastStep, lastWait, down := r.GetOld(), "", "", false
	started := r.GetStartedAt().AsTime()
	// Events are printed once each: several may share a time (a forced
	// step records two at once), so they are told apart whole.
	seen := map[string]bool{}
	key := func(e *cav1.TrustEvent) string {
		return fmt.Sprint(e.GetAt().AsTime().UnixNano(), e.GetAction(), e.GetAuthority(), e.GetWho(), e.GetDetail())
	}
	for _, e := range seenEvents {
		seen[key(e)] = true
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		callCtx, cancel := context.WithTimeout(ctx, timeout)
		st, err := c.Status(callCtx, &cav1.StatusRequest{})
		cancel()
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("stopped following the rotation at step %s; it goes on (bulwark ca rotate --wait attaches to it again)", lastStep)
		case err != nil && (status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded):
			if !down {
				fmt.Fprintln(out, "the control plane does not answer; waiting for it (the rotation is stored and resumes when it is back)")
				down = true
			}
		case err != nil:
			return adminError(err)
		default:
			if down {
				fmt.Fprintln(out, "the control plane answers again")
				down = false
			}
			for _, e := range st.GetEvents() {
				if k := key(e); !seen[k] && !e.GetAt().AsTime().Before(started) {
					seen[k] = true
					controlplane.WriteEvent(out, e)
				}
			}
			cur := st.GetRotation()
			if cur == nil || cur.GetOld() != old {
				fmt.Fprintf(out, "rotation done: %s replaced; bundle sequence %d\n", old, st.GetSequence())
				return nil
			}
			if cur.GetStep() != lastStep {
				fmt.Fprintf(out, "step %s\n", cur.GetStep())
				lastStep, lastWait = cur.GetStep(), ""
			}
			if w := cur.GetWaiting(); w != "" {
				desc := w
				if n := len(cur.GetLaggards()); n > 0 {
					desc += ": " + strings.Join(cur.GetLaggards()[:min(n, 10)], "; ")
					if n > 10 {
						desc += fmt.Sprintf("; and %d more", n-10)
					}
				}
				if desc != lastWait {
					fmt.Fprintf(out, "  waiting: %s\n", desc)
					lastWait = desc
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func runCARevoke(unrevoke bool) func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name := "revoke"
	synopsis := "--workload NAMESPACE/NAME | --id SPIFFE-ID | --serial HEX | --authority ID --reason TEXT"
	if unrevoke {
		name, synopsis = "unrevoke", "--workload NAMESPACE/NAME | --id SPIFFE-ID | --serial HEX | --authority ID"
	}
	return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		fs := newFlags("ca "+name, synopsis, stderr)
		af := bindAdmin(fs)
		workload := fs.String("workload", "", "every certificate of a workload, namespace/name")
		id := fs.String("id", "", "every certificate with a SPIFFE ID")
		serial := fs.String("serial", "", "one certificate, by serial number (hex); an authority's signing certificate revokes the authority")
		authority := fs.String("authority", "", "an authority (its ID, as bulwark ca status shows it): every certificate it signed; another takes over at once")
		reason := fs.String("reason", "", "why (required to revoke; kept in the audit trail)")
		if err := parse(fs, args); err != nil {
			return err
		}
		var kind, value string
		n := 0
		for _, f := range []struct{ k, v string }{{"workload", *workload}, {"id", *id}, {"serial", *serial}, {"authority", *authority}} {
			if f.v != "" {
				kind, value = f.k, f.v
				n++
			}
		}
		if fs.NArg() != 0 || n != 1 || (!unrevoke && strings.TrimSpace(*reason) == "") {
			fs.Usage()
			return errUsage
		}
		opr := &cav1.Operator{As: *af.as, Reason: *reason}
		return adminStep(ctx, af, func(ctx context.Context, c cav1.TrustAdminClient) error {
			var resp *cav1.ChangeResponse
			var err error
			if unrevoke {
				resp, err = c.Unrevoke(ctx, &cav1.UnrevokeRequest{Kind: kind, Value: value, Operator: opr})
			} else {
				resp, err = c.Revoke(ctx, &cav1.RevokeRequest{Kind: kind, Value: value, Operator: opr})
			}
			if err != nil {
				return err
			}
			printChange(stdout, fmt.Sprintf("%s %s %sd", kind, value, name), resp)
			return nil
		})
	}
}

func runCACRL(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	usage := "Usage: bulwark ca crl import FILE | clear AUTHORITY [--socket PATH]"
	if len(args) == 0 || isHelp(args[0]) {
		return groupUsage(args, usage, stderr)
	}
	sub := args[0]
	if sub != "import" && sub != "clear" {
		fmt.Fprintf(stderr, "bulwark ca crl: unknown subcommand %q (import, clear)\n", sub)
		return errUsage
	}
	arg := "FILE"
	if sub == "clear" {
		arg = "AUTHORITY"
	}
	fs := newFlags("ca crl "+sub, arg, stderr)
	af := bindAdmin(fs)
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errUsage
	}
	opr := &cav1.Operator{As: *af.as}
	return adminStep(ctx, af, func(ctx context.Context, c cav1.TrustAdminClient) error {
		if sub == "clear" {
			resp, err := c.ClearCRL(ctx, &cav1.ClearCRLRequest{Authority: pos[0], Operator: opr})
			if err != nil {
				return err
			}
			printChange(stdout, "imported CRL of "+pos[0]+" cleared", resp)
			return nil
		}
		data, err := readBounded(pos[0], 8<<20)
		if err != nil {
			return err
		}
		resp, err := c.ImportCRL(ctx, &cav1.ImportCRLRequest{Crl: data, Operator: opr})
		if err != nil {
			return err
		}
		printChange(stdout, fmt.Sprintf("CRL %s imported for authority %s", pos[0], resp.GetAuthority()), resp)
		return nil
	})
}

// readBounded reads a file the operator names, refusing one larger than
// max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b, nil
}
