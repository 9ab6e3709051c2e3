// Package pemutil turns certificates and private keys into PEM and back.
// It is the one place both sides of the mesh share for it: the CA writes
// and reads its files with it, and the sidecar's SDS server hands Envoy
// its certificate and key with it.
//
// It owns the encoding only. It must never decide whether a certificate
// is valid or trusted, read or write files, or import any other package
// of this module, so that a sidecar can use it without pulling in the CA.
package pemutil
