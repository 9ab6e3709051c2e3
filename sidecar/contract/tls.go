package contract

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/bulwarkmesh/bulwark/internal/protoany"
)

// SDSConfigSource points Envoy at the agent's SDS server through the
// SDSCluster of its bootstrap. It returns a new message on every call.
func SDSConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:             corev3.ApiConfigSource_GRPC,
			TransportApiVersion: corev3.ApiVersion_V3,
			GrpcServices: []*corev3.GrpcService{{
				TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: SDSCluster}},
			}},
			SetNodeOnFirstMessageOnly: true,
		}},
	}
}

// CommonTLS presents the workload's certificate (SecretCertificate) and
// trusts the bundle (SecretRoots), both from the agent over SDS, and
// accepts a peer only if one of its URI SANs matches one of sans. An
// empty sans is Envoy's "any SAN": callers that mean "no one" pass a
// matcher for NoIdentity. alpn may be nil.
func CommonTLS(sans []*matcherv3.StringMatcher, alpn []string) *tlsv3.CommonTlsContext {
	var matchers []*tlsv3.SubjectAltNameMatcher
	for _, m := range sans {
		matchers = append(matchers, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m})
	}
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
			Name: SecretCertificate, SdsConfig: SDSConfigSource(),
		}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: matchers},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretRoots, SdsConfig: SDSConfigSource()},
			},
		},
		AlpnProtocols: alpn,
	}
}

// ClientTLS originates mutual TLS with the workload's certificate and
// accepts the server only if it is exactly one of ids (SPIFFE IDs). An
// empty ids accepts no one. The bootstrap uses it to reach the control
// plane; the control plane uses it for every outbound cluster.
func ClientTLS(ids []string) *corev3.TransportSocket {
	if len(ids) == 0 {
		// Envoy reads an empty matcher list as "any SAN"; fail closed.
		ids = []string{NoIdentity}
	}
	var sans []*matcherv3.StringMatcher
	for _, id := range ids {
		sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
	}
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: protoany.Must(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: CommonTLS(sans, nil),
		})},
	}
}
