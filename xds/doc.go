// Package xds translates the model into Envoy resources for one proxy:
// listeners, route configurations, clusters and cluster load assignments.
//
// Translation is pure: Translate reads a model snapshot and the workload a
// proxy serves and returns new protos, sorted by name, so the same input
// always gives byte-identical output. It reads no clock, holds no state,
// talks to no server and never mutates the snapshot. Check verifies the
// references between the resources it produced before anything is
// published.
//
// Resource names are part of Bulwark's interface (they appear in Envoy's
// stats, logs and admin output) and are documented in names.go.
package xds
