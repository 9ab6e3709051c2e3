// Package connlimit bounds the connections a server accepts: how many
// may be open at once in total, and how many from one source address.
// A connection past either cap is closed as soon as it is accepted,
// before a byte is read from it or a TLS handshake is spent on it, and
// counted in a metric whose only label is which cap refused it.
//
// It owns counting only. It never reads from or writes to a connection,
// and it never decides how long a connection may live: deadlines for the
// handshake and for idle connections belong to the server that reads
// them (the gRPC server's ConnectionTimeout and keepalive settings).
package connlimit
