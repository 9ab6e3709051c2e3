// Package e2e holds end-to-end tests through the real pieces: the
// control plane on loopback gRPC, real Envoy sidecars configured only over
// ADS, and real traffic between demo apps.
package e2e
