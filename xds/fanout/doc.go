// Package fanout serves the same configuration to many sidecars for the
// cost of one. It is a go-control-plane ConfigWatcher (plug it into the
// state-of-the-world ADS server) whose unit is not a per-node snapshot
// but a per-node list of shared, prepared resources:
//
//   - a Preparer marshals each resource once per translation pass and
//     keeps its encoding; every proxy whose configuration contains that
//     resource points at the same bytes;
//   - a node's configuration is one Set per resource type, itself made of
//     groups shared with other nodes, so a connected proxy costs a few
//     pointers, not a copy of its configuration;
//   - each type has its own content-derived version, so a change to
//     endpoints sends endpoints only, and for the types Envoy does not
//     require in full (endpoints, routes) only the resources that changed;
//   - Codec, installed on the gRPC server, writes a prepared response by
//     handing gRPC the shared bytes instead of marshaling (and copying)
//     them for every stream;
//   - there is no global lock: each node has its own, taken to swap its
//     configuration and answer its watches; sending is done by the
//     stream's own goroutine.
package fanout
