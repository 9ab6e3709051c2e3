// Package bootstrap writes the Envoy bootstrap for a Bulwark sidecar: who
// the proxy is (its node ID), where its admin interface listens, and how
// it reaches the control plane over ADS. Everything else the proxy runs
// comes over ADS.
//
// The bootstrap is built from Envoy's own protos and validated with their
// rules before it is rendered, so what this package prints is what Envoy's
// --mode validate accepts. It must not read the model or any source, and
// it takes the SDS and TLS wiring it shares with the control plane from
// package contract, never from the control plane's packages.
package bootstrap
