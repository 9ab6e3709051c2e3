package sds

import (
	"log/slog"
	"sync/atomic"

	"github.com/bulwarkmesh/bulwark/internal/peercred"
)

// peerFilter accepts only connections whose peer process runs as one of
// the allowed user IDs: anyone else who can open the socket is closed on
// before a byte of SDS is served. The kernel vouches for the peer's
// credentials (SO_PEERCRED, taken when it connected), so a process cannot
// claim another's.
func peerFilter(l peercred.Listener, log *slog.Logger, refused *atomic.Int64) peercred.Listener {
	l.Refused = func(cred peercred.Cred, err error) {
		refused.Add(1)
		if err != nil {
			log.Warn("SDS connection refused: cannot tell who the peer is", "err", err)
		} else {
			log.Warn("SDS connection refused: the peer's user may not have the workload's key",
				"peer_uid", cred.UID, "peer_pid", cred.PID, "allowed_uids", l.Allowed)
		}
	}
	return l
}
