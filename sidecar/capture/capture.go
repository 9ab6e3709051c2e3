// Package capture writes the iptables rules that send a workload's TCP
// traffic through its sidecar under transparent capture, the way an init
// container sets up a pod: inbound connections to the sidecar's inbound
// port, outbound connections to its outbound port, except the sidecar's
// own (by user or group), loopback, and what the operator excludes.
//
// It only produces and runs iptables commands in the current network
// namespace; it knows nothing of the mesh.
package capture

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/bulwarkmesh/bulwark/model"
)

// DefaultProxyID is the user and group the sidecar runs as; its own
// traffic is not captured.
const DefaultProxyID = 1337

// Chains created in the nat table.
const (
	chainInbound    = "BULWARK_INBOUND"
	chainInRedirect = "BULWARK_IN_REDIRECT"
	chainOutput     = "BULWARK_OUTPUT"
	chainRedirect   = "BULWARK_REDIRECT"
)

// Config says what to capture.
type Config struct {
	// ProxyUID and ProxyGID identify the sidecar's processes; default 1337.
	ProxyUID, ProxyGID int
	// InboundPort and OutboundPort are the sidecar's capture listeners;
	// default 15006 and 15001.
	InboundPort, OutboundPort uint32
	// ExcludeInboundPorts reach the app directly (say, a health port the
	// kubelet probes).
	ExcludeInboundPorts []uint32
	// ExcludeOutboundPorts and ExcludeOutboundCIDRs leave the workload
	// without the sidecar.
	ExcludeOutboundPorts []uint32
	ExcludeOutboundCIDRs []string
}

func (c *Config) defaults() error {
	if c.ProxyUID == 0 {
		c.ProxyUID = DefaultProxyID
	}
	if c.ProxyGID == 0 {
		c.ProxyGID = DefaultProxyID
	}
	if c.InboundPort == 0 {
		c.InboundPort = model.InboundCapturePort
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = model.OutboundCapturePort
	}
	for _, cidr := range c.ExcludeOutboundCIDRs {
		if _, err := netip.ParsePrefix(cidr); err != nil {
			return fmt.Errorf("capture: %q is not a CIDR: %w", cidr, err)
		}
	}
	return nil
}

// Rules returns the iptables commands (arguments after "iptables") that
// set capture up, in order.
func Rules(cfg Config) ([][]string, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	nat := func(args ...string) []string { return append([]string{"-t", "nat"}, args...) }
	port := func(p uint32) string { return strconv.FormatUint(uint64(p), 10) }
	r := [][]string{
		nat("-N", chainInRedirect),
		nat("-A", chainInRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port(cfg.InboundPort)),
		nat("-N", chainRedirect),
		nat("-A", chainRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", port(cfg.OutboundPort)),

		nat("-N", chainInbound),
		nat("-A", "PREROUTING", "-p", "tcp", "-j", chainInbound),
	}
	for _, p := range cfg.ExcludeInboundPorts {
		r = append(r, nat("-A", chainInbound, "-p", "tcp", "--dport", port(p), "-j", "RETURN"))
	}
	r = append(r,
		nat("-A", chainInbound, "-p", "tcp", "-j", chainInRedirect),

		nat("-N", chainOutput),
		nat("-A", "OUTPUT", "-p", "tcp", "-j", chainOutput),
		// The sidecar's own connections go where they were meant to.
		nat("-A", chainOutput, "-m", "owner", "--uid-owner", strconv.Itoa(cfg.ProxyUID), "-j", "RETURN"),
		nat("-A", chainOutput, "-m", "owner", "--gid-owner", strconv.Itoa(cfg.ProxyGID), "-j", "RETURN"),
		nat("-A", chainOutput, "-d", "127.0.0.1/32", "-j", "RETURN"),
	)
	for _, p := range cfg.ExcludeOutboundPorts {
		r = append(r, nat("-A", chainOutput, "-p", "tcp", "--dport", port(p), "-j", "RETURN"))
	}
	for _, c := range cfg.ExcludeOutboundCIDRs {
		r = append(r, nat("-A", chainOutput, "-d", c, "-j", "RETURN"))
	}
	r = append(r, nat("-A", chainOutput, "-j", chainRedirect))
	return r, nil
}

// CleanupRules returns the commands that remove what Rules set up. Some
// fail when nothing is set up; that is fine.
func CleanupRules() [][]string {
	nat := func(args ...string) []string { return append([]string{"-t", "nat"}, args...) }
	return [][]string{
		nat("-D", "PREROUTING", "-p", "tcp", "-j", chainInbound),
		nat("-D", "OUTPUT", "-p", "tcp", "-j", chainOutput),
		nat("-F", chainInbound), nat("-X", chainInbound),
		nat("-F", chainOutput), nat("-X", chainOutput),
		nat("-F", chainInRedirect), nat("-X", chainInRedirect),
		nat("-F", chainRedirect), nat("-X", chainRedirect),
	}
}

// Apply removes any earlier capture and sets it up anew by running
// iptables.
func Apply(ctx context.Context, cfg Config) error {
	rules, err := Rules(cfg)
	if err != nil {
		return err
	}
	_ = run(ctx, CleanupRules(), true)
	return run(ctx, rules, false)
}

// Cleanup removes capture.
func Cleanup(ctx context.Context) error { return run(ctx, CleanupRules(), true) }

func run(ctx context.Context, rules [][]string, ignoreErrors bool) error {
	bin, err := exec.LookPath("iptables")
	if err != nil {
		return errors.New("capture: iptables not found (apt-get install iptables)")
	}
	for _, args := range rules {
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil && !ignoreErrors {
			return fmt.Errorf("capture: iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// Script renders rules as shell commands, for an init container's log or
// for review.
func Script(rules [][]string) string {
	var b strings.Builder
	for _, r := range rules {
		b.WriteString("iptables " + strings.Join(r, " ") + "\n")
	}
	return b.String()
}
