package sds

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync/atomic"
)

// peerFilter accepts only connections whose peer process runs as one of
// the allowed user IDs: anyone else who can open the socket is closed on
// before a byte of SDS is served. The kernel vouches for the peer's
// credentials (SO_PEERCRED, taken when it connected), so a process cannot
// claim another's.
type peerFilter struct {
	net.Listener
	allowed []uint32
	log     *slog.Logger
	refused *atomic.Int64
}

// Accept returns the next connection from an allowed peer, closing the
// others.
func (f peerFilter) Accept() (net.Conn, error) {
	for {
		c, err := f.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, pid, err := peerUID(c)
		if err == nil && slices.Contains(f.allowed, uid) {
			return c, nil
		}
		f.refused.Add(1)
		if err != nil {
			f.log.Warn("SDS connection refused: cannot tell who the peer is", "err", err)
		} else {
			f.log.Warn("SDS connection refused: the peer's user may not have the workload's key",
				"peer_uid", uid, "peer_pid", pid, "allowed_uids", f.allowed)
		}
		_ = c.Close()
	}
}

// allowedUIDs is uids, or this process's own user ID when there are none.
func allowedUIDs(uids []uint32) []uint32 {
	if len(uids) == 0 {
		return []uint32{uint32(os.Getuid())}
	}
	return slices.Clone(uids)
}

var errNotUnix = errors.New("not a Unix socket connection")
