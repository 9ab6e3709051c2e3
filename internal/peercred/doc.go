// Package peercred tells who is at the other end of a Unix socket
// connection, as the kernel recorded it when the peer connected
// (SO_PEERCRED), and filters a listener down to the user IDs allowed to
// talk to it. It is what keeps the SDS socket (a workload's key) and the
// trust admin socket (the CA's lifecycle) to their own users.
//
// It must never take a peer's word for who it is: only the kernel's.
// Where the kernel cannot say (not Linux, not a Unix socket), it fails
// closed.
package peercred
