package agent

import (
	"strconv"
	"time"
)

// DrainTime is how long the sidecar's Envoy drains connections before it
// closes them: those of a filter chain that an LDS update changed or
// removed (an in-place filter chain update), and those of a listener
// that an update replaced or removed. During the drain an HTTP/2 peer
// gets a GOAWAY and an HTTP/1.1 response says "Connection: close", so a
// busy connection moves to the new configuration after its current
// request; at the end every connection still open, idle keep-alive and
// TCP ones included, is closed.
//
// Envoy's default is 600 seconds, made for a front proxy whose clients
// are slow to go. In a sidecar it is the time a connection keeps a
// configuration the control plane has replaced: a revoked certificate
// (the revocation epoch changes every mutual TLS chain; see package xds),
// a narrowed authorization policy (the RBAC filters are part of the
// chain). Peers are other sidecars and local apps that reconnect at
// once, so a short drain costs little: a request still running when it
// ends is reset. Hot restart, the other thing the flag governs, is
// disabled (see envoy.Start).
const DrainTime = 5 * time.Second

// drainArgs are the drain flags of the sidecar's Envoy. "immediate"
// tells every connection of a draining listener to close from the
// start, instead of a share that grows over the drain time
// ("gradual", Envoy's default, which spreads reconnections of a large
// front proxy over minutes and within five seconds spreads nothing).
// A drained filter chain is always immediate: the strategy only applies
// to whole listeners.
func drainArgs() []string {
	return []string{"--drain-time-s", strconv.Itoa(int(DrainTime / time.Second)), "--drain-strategy", "immediate"}
}
