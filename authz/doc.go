// Package authz turns access policies into decisions and into Envoy RBAC.
//
// It compiles the policies that apply to one port of one workload into a
// Table: the enforced DENY rules, the enforced ALLOW rules, the mesh
// default, and the same with dry-run policies included. Everything that
// decides access reads that one Table: Evaluate (behind `bulwark policy
// explain` and `matrix`), EvaluateAny (config scoping), and the RBAC
// filters the translator installs. So what the tools say is what Envoy
// does.
//
// The semantics: DENY rules are evaluated before ALLOW rules; a workload
// selected by any enforced ALLOW policy denies every request no ALLOW rule
// matches; a workload no ALLOW policy selects gets the mesh default (deny,
// or allow-mesh: any authenticated identity of the trust domain). A rule
// matches when one of its sources and one of its operations match. Paths
// are matched after Envoy's normalization, which NormalizePath
// reproduces. A DENY path also matches the path with ";parameters" on its
// segments, and every path with a segment of only parameters or a dot
// with them (SuspectPath); an ALLOW path never matches either (see
// model.PathPattern.Regex). On a TCP port, an ALLOW rule
// that names methods or paths never matches and a DENY rule that does
// matches regardless of them: TCP cannot be half allowed.
//
// Like the translator it is pure: no clock, no I/O.
package authz
