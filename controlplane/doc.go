// Package controlplane assembles `bulwark serve`: the model store, the
// source that feeds it (mesh files or a Kubernetes cluster), the
// certificate authority and its certificate service, the ADS server on
// one mutual-TLS gRPC port, and the HTTP endpoint for metrics and status.
//
// It owns the wiring only, as small steps: newSources builds the source
// for a mode, newAuthority the CA, ownIdentity the control plane's SPIFFE
// ID, and serve binds the listeners and runs the parts. The CA is an
// Authority, an interface declared here, so a CA other than the file CA
// (an upstream authority, a key in a vault, a CA being rotated) plugs in
// through Config.CA without changing the wiring.
//
// The default CA is a rotating one (rotating.go): built from the trust
// State (package ca/trust) that a TrustCoordinator keeps (the CA
// directory, or in Kubernetes mode the CA Secret), signing with the
// active authority and handing out the bundle's roots and CRLs. The trust
// loop (trustloop.go) reloads the State when it changes, keeping the last
// good one when it does not load, and while this replica leads drives the
// rotation in progress one gated step per save, so a restart resumes it.
// The admin service (admin.go) is the operator's way in, on a Unix socket
// that only this process's user and root may use (adminsocket.go).
//
// It must never translate, authorize, sign or authenticate anything
// itself; each of those lives in its own package. It must never create a
// CA that an operator did not ask for: a new root is a mesh-wide outage.
package controlplane
