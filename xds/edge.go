package xds

import (
	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwarkmesh/bulwark/internal/protoany"
)

// Every listener of a sidecar is an edge of the mesh: the outbound ones
// take what the app sends, the inbound ones what a peer (another sidecar,
// or anything holding a workload's key) sends. Envoy trusts a request's
// own headers for some of its bookkeeping unless it takes the request for
// an external one, and the access log and the app read that bookkeeping:
// a client-sent x-envoy-original-path used to become the logged path, a
// client-sent x-forwarded-for the logged downstream address, a
// client-sent x-request-id the logged request ID. So each HTTP
// connection manager
//
//   - removes every request header named x-envoy-*, before Envoy looks at
//     the request at all: whatever Envoy means by such a header, only
//     Envoy itself may set it, and it does so afresh at each hop;
//   - takes the connection's peer, never x-forwarded-for, for the
//     downstream address (use_remote_address; the peer is appended to
//     x-forwarded-for, so its last entry is one the app can trust);
//   - counts no address as internal, loopback included (the app reaches
//     its outbound listener over loopback), so every request is an edge
//     request: x-forwarded-proto is overwritten and x-request-id is
//     generated afresh, never taken from the caller;
//   - strips x-forwarded-client-cert from what it forwards; the inbound
//     mutual TLS chain then sets it from the verified peer (inboundFilters).
//
// The path that is logged is :path after Envoy normalized it, which is
// what routing and authorization matched (see accessLog).

// envoyHeaderPrefix starts the names of the headers only Envoy may set.
const envoyHeaderPrefix = "x-envoy-"

// guardEdge configures hcm as an edge of the mesh, as described above.
func guardEdge(hcm *hcmv3.HttpConnectionManager) {
	hcm.UseRemoteAddress = wrapperspb.Bool(true)
	// Present and empty: no address, and no Unix socket, is internal.
	hcm.InternalAddressConfig = &hcmv3.HttpConnectionManager_InternalAddressConfig{}
	hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE
	hcm.EarlyHeaderMutationExtensions = []*corev3.TypedExtensionConfig{{
		Name: "envoy.http.early_header_mutation.header_mutation",
		TypedConfig: protoany.Must(&earlymutationv3.HeaderMutation{Mutations: []*mutationrulesv3.HeaderMutation{{
			Action: &mutationrulesv3.HeaderMutation_RemoveOnMatch_{RemoveOnMatch: &mutationrulesv3.HeaderMutation_RemoveOnMatch{
				KeyMatcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: envoyHeaderPrefix}},
			}},
		}}}),
	}}
}
