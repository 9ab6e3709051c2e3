package controlplane

import (
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/internal/connlimit"
)

// Default limits of the gRPC port (ADS and the CA service), for a mesh of
// a few thousand sidecars. Each sidecar holds two connections: its
// Envoy's ADS stream and its agent's trust bundle watch (a renewal opens
// a third for a moment).
const (
	// DefaultHandshakeTimeout bounds the time from accepting a connection
	// to its TLS handshake and HTTP/2 preface being done. A real client
	// needs milliseconds; gRPC's own default is two minutes.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultIdleTimeout closes a connection that has had no stream for
	// this long. Envoy keeps its ADS stream open for the life of the
	// connection, the agent its bundle watch, and a renewal's connection
	// is closed after its call, so only a client that holds a connection
	// for nothing is affected.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxConnections is twice what 8,000 sidecars hold, for
	// reconnections overlapping old connections not yet closed. An idle
	// TLS connection costs about 56 KB, so the cap bounds what
	// connections without streams can take to about 2 GB.
	DefaultMaxConnections = 32768
	// DefaultMaxConnectionsPerSource allows a Kubernetes node of 110 pods
	// (the kubelet's default maximum, 220 connections) behind one NAT
	// address twice over, and the local demo (every sidecar on
	// 127.0.0.1) a few hundred workloads.
	DefaultMaxConnectionsPerSource = 512
)

// Limits bounds what callers of the gRPC port can hold and obtain. The
// zero value means the defaults.
type Limits struct {
	// HandshakeTimeout bounds the TLS handshake together with the HTTP/2
	// preface and first SETTINGS frame (gRPC's ConnectionTimeout, which
	// covers both in grpc-go 1.85); default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// IdleTimeout closes connections without streams (keepalive's
	// MaxConnectionIdle); default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MaxConnections caps open connections in total, and
	// MaxConnectionsPerSource those from one IP address; a connection
	// past either is closed on accept. Zero means the default, negative
	// no limit.
	MaxConnections          int
	MaxConnectionsPerSource int
	// Issuance limits certificate issuance per SPIFFE ID and in total.
	Issuance issuer.RateLimit
}

func (l Limits) withDefaults() Limits {
	if l.HandshakeTimeout <= 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxConnectionsPerSource == 0 {
		l.MaxConnectionsPerSource = DefaultMaxConnectionsPerSource
	}
	return l
}

// Listener wraps the gRPC port's listener with the connection caps,
// registering their metrics on reg when it is not nil. (The load harness
// serves through it too.)
func (l Limits) Listener(lis net.Listener, log *slog.Logger, reg prometheus.Registerer) net.Listener {
	l = l.withDefaults()
	return connlimit.New(lis, connlimit.Config{Max: l.MaxConnections, MaxPerSource: l.MaxConnectionsPerSource,
		Logger: log, Registerer: reg})
}

// ServerOptions are the gRPC server options that bound a connection's
// life: the handshake deadline, and keepalive, which pings a quiet
// client and closes it if it does not answer, closes connections idle
// of streams, and closes clients that ping too often.
func (l Limits) ServerOptions() []grpc.ServerOption {
	l = l.withDefaults()
	return []grpc.ServerOption{
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: l.IdleTimeout,
			Time:              30 * time.Second,
			Timeout:           10 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
}
