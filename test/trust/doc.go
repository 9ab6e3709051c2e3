// Package trust proves the trust lifecycle (issue 12) end to end, with
// real Envoys under continuous traffic: root and intermediate rotation,
// the activate gate held by a disconnected proxy, an authority removed too
// early (refused, then forced to show what it breaks), a rotation that
// survives the control plane being SIGKILLed, revoking a workload, and
// revoking the active intermediate (the runbook's stolen key).
//
// The control plane is a separate `bulwark serve` process (built once per
// test binary) so that a test can kill and restart it; each workload is a
// `bulwark agent --run-envoy` process with its Envoy, and a demo app in
// the test process. Traffic runs for every caller->callee pair all along:
// HTTP over a kept-alive connection, and a TCP line over a fresh
// connection every time, so that a sidecar-to-sidecar mTLS handshake
// happens continuously. What each Envoy trusts and presents is read from
// its admin interface: /certs (serials), and the SDS secrets it has active
// in /config_dump (the certificates, the CRLs, the leaf's chain).
//
// README: `go test ./test/trust/ -v -count=1` (ENVOY_BIN, or
// .venv/bin/envoy from `make envoy`) runs these in about a minute and a
// half on two cores; the figures they measure are the t.Log lines that
// start "MEASURED:".
// go test -short (the unit tier) leaves them out by design and builds
// nothing; without -short a missing Envoy fails them, never skips.
package trust
