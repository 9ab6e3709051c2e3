package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/bulwarkmesh/bulwark/sidecar/capture"
)

// runIPTables is what an init container runs: it sets up transparent
// capture in the current network namespace.
func runIPTables(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("iptables", "[--print] [--cleanup] [flags]", stderr)
	var cfg capture.Config
	fs.IntVar(&cfg.ProxyUID, "proxy-uid", capture.DefaultProxyID, "user ID the sidecar runs as (its traffic is not captured)")
	fs.IntVar(&cfg.ProxyGID, "proxy-gid", capture.DefaultProxyID, "group ID the sidecar runs as (its traffic is not captured)")
	inPorts := fs.String("exclude-inbound-ports", "", "comma-separated ports that reach the app directly")
	outPorts := fs.String("exclude-outbound-ports", "", "comma-separated destination ports not captured")
	cidrs := fs.String("exclude-outbound-cidrs", "", "comma-separated destination CIDRs not captured")
	print := fs.Bool("print", false, "print the iptables commands instead of running them")
	cleanup := fs.Bool("cleanup", false, "remove the capture rules")
	if err := parse(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.ExcludeInboundPorts, err = ports(*inPorts); err != nil {
		return fmt.Errorf("--exclude-inbound-ports: %w", err)
	}
	if cfg.ExcludeOutboundPorts, err = ports(*outPorts); err != nil {
		return fmt.Errorf("--exclude-outbound-ports: %w", err)
	}
	if *cidrs != "" {
		cfg.ExcludeOutboundCIDRs = strings.Split(*cidrs, ",")
	}
	if *cleanup {
		if *print {
			fmt.Fprint(stdout, capture.Script(capture.CleanupRules()))
			return nil
		}
		return capture.Cleanup(ctx)
	}
	rules, err := capture.Rules(cfg)
	if err != nil {
		return err
	}
	if *print {
		fmt.Fprint(stdout, capture.Script(rules))
		return nil
	}
	if err := capture.Apply(ctx, cfg); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "transparent capture set up: %d iptables rules\n", len(rules))
	return nil
}

func ports(s string) ([]uint32, error) {
	if s == "" {
		return nil, nil
	}
	var out []uint32
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a port", p)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}
