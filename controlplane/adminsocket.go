package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/internal/peercred"
)

// DefaultKubeAdminSocket is the admin socket in Kubernetes mode; in file
// mode it is admin.sock in the CA directory.
const DefaultKubeAdminSocket = "/var/run/bulwark/admin.sock"

// maxAsBytes bounds the operator's note (--as) kept in the audit trail.
const maxAsBytes = 128

// adminAllowed is who may use the admin socket: the control plane's own
// user and root. Anyone else who can reach the file (its mode is 0600,
// but a directory's permissions or a container's user namespace may let
// them) is closed on at once.
func adminAllowed() []uint32 {
	own := uint32(os.Getuid())
	if own == 0 {
		return []uint32{0}
	}
	return []uint32{own, 0}
}

// listenAdmin binds the Unix socket at path with mode 0600, replacing a
// stale socket file left by a process that died (but never a live one,
// nor anything that is not a socket), and admits only allowed peers.
func listenAdmin(path string, allowed []uint32, log *slog.Logger, refused func()) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket %s: the file exists and is not a socket; refusing to replace it", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s: another process serves it (a second control plane on the same CA directory?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket %s: remove the stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return peercred.Listener{Listener: l, Allowed: allowed, Refused: func(cred peercred.Cred, err error) {
		refused()
		if err != nil {
			log.Warn("admin connection refused: cannot tell who the peer is", "socket", path, "err", err)
			return
		}
		log.Warn("admin connection refused: only the control plane's own user and root may change the trust lifecycle",
			"socket", path, "peer", cred.String(), "allowed_uids", allowed)
	}}, nil
}

// peerCreds are transport credentials for the admin socket: no
// encryption (the kernel carries the bytes), and an AuthInfo with the
// peer's credentials as peercred.Listener read them, so that a handler
// knows who called from the kernel's word.
type peerCreds struct{}

// peerAuth is the AuthInfo of an admin connection.
type peerAuth struct {
	credentials.CommonAuthInfo
	cred peercred.Cred
}

func (peerAuth) AuthType() string { return "peercred" }

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pc, ok := c.(*peercred.Conn)
	if !ok {
		return nil, nil, errors.New("admin socket: a connection without peer credentials")
	}
	return c, peerAuth{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, cred: pc.Cred}, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("admin socket: server-side credentials only")
}
func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }

//nolint:staticcheck // part of the interface
func (peerCreds) OverrideServerName(string) error { return nil }

// callerOf names who called, for the audit trail: the user the kernel
// reports, then the operator's note (bounded), if any.
func callerOf(ctx context.Context, as string) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", errors.New("no peer")
	}
	a, ok := p.AuthInfo.(peerAuth)
	if !ok {
		return "", errors.New("a caller whose user is unknown")
	}
	// Checked again here, not only at accept: a handler must never act
	// for a user the listener should not have let in.
	if !slices.Contains(adminAllowed(), a.cred.UID) {
		return "", fmt.Errorf("%s may not use the admin socket", peercred.Describe(a.cred.UID))
	}
	who := peercred.Describe(a.cred.UID)
	if as != "" {
		who += " as " + bounded.Quote(as, maxAsBytes)
	}
	return who, nil
}

// newAdminServer is the gRPC server of the admin socket.
func newAdminServer() *grpc.Server {
	return grpc.NewServer(grpc.Creds(peerCreds{}), grpc.MaxRecvMsgSize(4<<20))
}

// listenAdminFor binds cfg's admin socket, or returns nil when there is
// none to serve.
func listenAdminFor(cfg Config, reg prometheus.Registerer) (net.Listener, error) {
	if cfg.AdminSocket == "" || cfg.AdminSocket == "none" {
		return nil, nil
	}
	refused := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "bulwark_trust_admin_refused_connections_total",
		Help: "Connections to the admin socket closed because the peer's user is neither the control plane's nor root.",
	})
	reg.MustRegister(refused)
	l, err := listenAdmin(cfg.AdminSocket, adminAllowed(), cfg.Logger, refused.Inc)
	if err != nil && cfg.adminDefault {
		// The default place may not do (a path longer than a Unix socket
		// allows, a directory shared with another control plane): serving
		// goes on, and the log says how to get the admin service back.
		cfg.Logger.Warn("no trust admin socket: 'bulwark ca' cannot reach this control plane; give --admin-socket", "err", err)
		return nil, nil
	}
	return l, err
}

// serveAdmin serves s on lis in g until ctx ends, then stops it.
func serveAdmin(ctx context.Context, g *errgroup.Group, s *grpc.Server, lis net.Listener) {
	g.Go(func() error {
		if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("admin socket: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		s.Stop() // closing the listener unlinks the socket file
		return nil
	})
}

// DialAdmin returns a client of the trust admin service on the Unix
// socket at path (what `bulwark ca` talks to). The connection carries no
// credential: the control plane asks the kernel who is calling. Close
// the returned connection when done.
func DialAdmin(path string, opts ...grpc.DialOption) (cav1.TrustAdminClient, *grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient("unix:"+path, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return cav1.NewTrustAdminClient(conn), conn, nil
}
