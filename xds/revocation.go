package xds

import (
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Envoy checks a peer's certificate when a connection is set up, never
// after: a new validation context (a revoked certificate in its CRL)
// applies to new handshakes only, and every connection established before
// stays open as long as its peers keep it busy (envoyproxy/envoy#28386).
// So a revocation also closes every mutual TLS connection once, by giving
// the configuration each one was made with something new, the mesh's
// revocation epoch:
//
//   - on the inbound filter chains that require a client certificate
//     (the mutual TLS chain of a STRICT or PERMISSIVE port), as filter
//     chain metadata. Envoy takes a listener update that changes only
//     filter chains in place and drains the connections of the chains
//     that changed (a chain is identified by its whole proto), and only
//     those: a plaintext chain keeps its connections. The drain closes
//     them after Envoy's --drain-time-s (the sidecar's agent sets it;
//     meanwhile HTTP/2 peers get a GOAWAY and HTTP/1.1 responses say
//     "Connection: close");
//   - on the clusters that originate mutual TLS, as cluster metadata.
//     Envoy builds a cluster whose configuration changed anew and drains
//     the connection pools of the old one once the new one has warmed
//     (it has its load assignment; the fanout cache sends it again): an
//     idle pooled connection is closed at once, a busy one when its
//     request ends;
//   - on the outbound chains that proxy TCP to such a cluster, as filter
//     chain metadata: a proxied TCP connection is not pooled, and lives
//     on after its cluster is replaced, so the app's side of it is
//     drained, which closes the upstream side with it.
//
// Each side closes its own connections, so neither needs the other to
// cooperate: a server's sidecar closes the connections of a revoked
// client, a client's sidecar those to a revoked server.
//
// Epoch 0 stamps nothing, so a mesh that never revoked anything has the
// configuration it always had, and the epoch is the same for every proxy,
// so parts stay shared.

// RevocationMetadataKey is the metadata namespace of the revocation
// epoch, in a filter chain's or a cluster's metadata: field "epoch", the
// epoch in decimal (a string: a protobuf Struct number is a double).
const RevocationMetadataKey = "bulwark.dev/revocation"

// revocationMetadata is the stamp of epoch, or nil for epoch 0.
func revocationMetadata(epoch uint64) *corev3.Metadata {
	if epoch == 0 {
		return nil
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		RevocationMetadataKey: {Fields: map[string]*structpb.Value{
			"epoch": structpb.NewStringValue(strconv.FormatUint(epoch, 10)),
		}},
	}}
}
