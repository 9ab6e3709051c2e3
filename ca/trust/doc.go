// Package trust keeps a trust domain's signing authorities over the
// years: which exist, which one signs, which are still trusted, which
// certificates are revoked, and the trust bundle that follows from it,
// with a sequence number every change moves forward.
//
// An authority (a root and the intermediate that signs leaves) moves
// through Prepared -> Active -> Retired -> Removed. Prepared: its root and
// CRL are in the bundle, nothing is signed with it. Active: new leaves are
// signed with it; exactly one authority is active. Retired: still
// trusted, no longer signing, until no live leaf chains to it. Removed:
// out of the bundle. The steps that can cut a workload off are gated on
// Evidence of what every connected proxy holds: Activate waits until every
// proxy has acknowledged a bundle carrying the new authority, Remove until
// no connected workload presents a leaf the authority signed. A refused
// step is a *GateError naming the laggards; Operation.Force overrides it
// and the event records what that breaks.
//
// Everything here is a pure function of a State and its arguments; a
// Store persists the State (a CA directory, or the Kubernetes CA Secret)
// with compare-and-swap on State.Revision, so that two writers never
// both win.
package trust
