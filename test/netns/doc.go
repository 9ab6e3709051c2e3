// Package netns runs workloads the way they run in pods: each in its own
// network namespace on a bridge, with iptables capture, an agent, a real
// Envoy and the demo app, plus an attacker namespace with no sidecar. The
// tests need root; they fail, never skip, without it (go test -short, the
// unit tier, leaves them out by design).
package netns
