// Package server publishes translated configuration to Envoy over ADS.
//
// It owns the go-control-plane snapshot cache and the ADS stream
// callbacks. It records connected proxies in the model store, watches the
// store, coalesces changes, translates for each connected proxy (only the
// load assignments when only endpoints changed), checks the result and
// sets a per-proxy snapshot whose per-type versions are content hashes, so
// a type that did not change is not sent again.
//
// It handles NACKs itself: a rejected version is logged once with the
// proxy and Envoy's error, counted, and not sent again until the
// configuration changes. Nothing is published before the sources have
// synced; a proxy that connects earlier is held until they have.
//
// It must not read sources or talk to Kubernetes; it reads the model.
package server
