//go:build !linux

package peercred

import (
	"errors"
	"net"
)

// peerCred fails closed where the peer's credentials cannot be read.
func peerCred(net.Conn) (Cred, error) {
	return Cred{}, errors.New("peercred: peer credentials are only checked on Linux")
}
