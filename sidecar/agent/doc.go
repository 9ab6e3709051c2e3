// Package agent runs beside a workload's Envoy. It generates the
// workload's private key locally (the key never leaves the host), proves
// the workload's identity to the control plane's CA service (with a
// one-time join token at first, then with its current certificate), and
// serves the certificate and trust bundle to its own Envoy over SDS on a
// Unix socket. It renews at half the certificate's lifetime, with
// jitter, writes the Envoy bootstrap, and can run Envoy as its child.
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
