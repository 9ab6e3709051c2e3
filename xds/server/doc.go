// Package server publishes translated configuration to Envoy over ADS
// (state of the world, aggregated; neither delta nor REST).
//
// It runs go-control-plane's ADS server over a fanout.Cache and owns the
// stream callbacks. A stream is admitted once its peer's verified
// certificate matches the workload its node ID names; the server keeps
// the admitted proxies itself, with where each stands per resource type
// (Proxies), and wakes its run loop when one connects or leaves. ACKs and
// NACKs are tracked per stream: a node's status is that of its latest
// admitted stream, and any other stream open with the same node ID is
// shown apart, never mixed into it. What a client sends (node IDs, type
// URLs, versions, NACK messages) is cut and escaped before it is logged,
// stored or returned in an error, and one node may hold only so many
// streams and type URLs.
//
// The run loop watches the model store, coalesces changes (endpoint-only
// changes and proxies coming and going wait less than the rest), and
// makes one translation pass per change: an xds.Translator builds what
// proxies share once and checks each proxy's parts (a configuration that
// fails the check is withheld; the proxy keeps its last), and a
// fanout.Preparer marshals each resource once. Each proxy's
// configuration is then set in the cache as shared, prepared sets whose
// per-type versions are content hashes, so a type that did not change is
// not sent again. When only proxies changed, only those that
// (re)connected are translated; when only endpoints changed, the
// translator rebuilds only the services whose endpoints did. A pass
// works out which tables changed by comparing its snapshot of the model
// with the one its translator was built from, never from the watch that
// woke it, so a write that lands as a pass starts is taken whole.
//
// SetRevocationEpoch makes every proxy drain its mutual TLS connections
// once (a revocation must also end the connections a revoked
// certificate already has); the epoch is stamped on what carries mutual
// TLS and nothing else.
//
// It handles NACKs itself: a rejected version is logged once with the
// proxy and Envoy's error, counted, and not sent again until the
// configuration changes. Nothing is published before the sources have
// synced; a proxy that connects earlier is held until they have.
//
// It must not read sources or talk to Kubernetes, and it never writes
// the model: it only reads it.
package server
