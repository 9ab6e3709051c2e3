// Package protoany packs protos into Any the one way Bulwark's
// generated Envoy configuration needs: deterministically, so equal
// configuration always gives equal bytes and equal version hashes.
//
// It holds no state and must not grow Envoy- or model-specific helpers:
// translators and the bootstrap writer share it, nothing more.
package protoany
