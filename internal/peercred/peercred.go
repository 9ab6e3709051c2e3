package peercred

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
)

// Cred is what the kernel recorded of a peer when it connected.
type Cred struct {
	UID uint32
	PID int32
}

// ErrNotUnix is returned for a connection that is not over a Unix socket:
// it has no peer credentials.
var ErrNotUnix = errors.New("peercred: not a Unix socket connection")

// Of returns the credentials of the process at the other end of c.
func Of(c net.Conn) (Cred, error) { return peerCred(c) }

// Allowed is uids, or this process's own user ID when there are none.
func Allowed(uids []uint32) []uint32 {
	if len(uids) == 0 {
		return []uint32{uint32(os.Getuid())}
	}
	return slices.Clone(uids)
}

// Describe names uid as an operator reads it: "uid 1000 (alice)", or
// "uid 1000" when the user database has no name for it.
func Describe(uid uint32) string {
	s := "uid " + strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil && u.Username != "" {
		s += " (" + u.Username + ")"
	}
	return s
}

// Listener accepts only connections whose peer runs as one of Allowed;
// anyone else who can open the socket is closed on before a byte is
// served. Refused is called (if set) with each refusal: cred is the
// peer's, or err says why it could not be read.
type Listener struct {
	net.Listener
	Allowed []uint32
	Refused func(cred Cred, err error)
}

// Accept returns the next connection from an allowed peer, closing the
// others. The connection it returns is a *Conn carrying the peer's
// credentials.
func (l Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := Of(c)
		if err == nil && slices.Contains(l.Allowed, cred.UID) {
			return &Conn{Conn: c, Cred: cred}, nil
		}
		if l.Refused != nil {
			l.Refused(cred, err)
		}
		_ = c.Close()
	}
}

// Conn is a connection Listener accepted, with its peer's credentials.
type Conn struct {
	net.Conn
	Cred Cred
}

// String is for logs.
func (c Cred) String() string { return fmt.Sprintf("%s pid %d", Describe(c.UID), c.PID) }
