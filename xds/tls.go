package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwarkmesh/bulwark/internal/protoany"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// TLS contexts name only the secrets of contract.Secrets, served by the
// agent beside each Envoy; Check refuses anything else. The contexts
// that originate TLS are contract.ClientTLS, shared with the bootstrap.

// trustDomainSAN matches any identity of the trust domain.
func trustDomainSAN(td string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + td + "/"}}
}

// serverTLS terminates mutual TLS: the caller must present a certificate
// of the trust domain.
func serverTLS(td string) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: protoany.Must(&tlsv3.DownstreamTlsContext{
			RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext:         contract.CommonTLS([]*matcherv3.StringMatcher{trustDomainSAN(td)}, nil),
			// On a resumed TLS session Envoy does not mark the peer
			// certificate as validated, so authorization by identity would
			// deny the caller (envoyproxy/envoy#42668). Every connection
			// does a full handshake instead.
			SessionTicketKeysType:            &tlsv3.DownstreamTlsContext_DisableStatelessSessionResumption{DisableStatelessSessionResumption: true},
			DisableStatefulSessionResumption: true,
		})},
	}
}

func plaintext() *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.raw_buffer",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: protoany.Must(&rawbufferv3.RawBuffer{})},
	}
}
