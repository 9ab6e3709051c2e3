// Package agent runs beside a workload's Envoy. It generates the
// workload's private key locally (the key never leaves the host), proves
// the workload's identity to the control plane's CA service (with a
// one-time join token at first, then with its current certificate), and
// serves the certificate and trust bundle to its own Envoy over SDS on a
// Unix socket. It renews at half the certificate's lifetime, with
// jitter, writes the Envoy bootstrap, and can run Envoy as its child.
//
// It keeps the trust bundle (roots and CRLs) current: a WatchTrustBundle
// stream to the control plane, authenticated with the current
// certificate, brings every newer bundle, which goes into the SDS trust
// bundle at once; the agent answers with the bundle it holds and the one
// its Envoy has acknowledged over SDS, so the control plane can tell
// which proxies are ready for a rotation step. It renews at once when
// its certificate no longer chains to the bundle's roots, and within the
// bundle's reissue window (at a random moment, once per bundle) when
// another authority signs now. The latest bundle's roots are also the
// anchors it verifies the control plane with.
// A failed call is retried with exponential backoff and jitter, and a
// refusal that says when to come back (the CA's rate limit) is never
// retried earlier.
//
// It must never send the private key anywhere but the local SDS socket,
// and never trusts anything but the control plane's own SPIFFE ID. It
// knows the control plane only through package contract (secret names,
// authorization schemes) and the CA service's API, never through the
// control plane's own packages.
package agent
