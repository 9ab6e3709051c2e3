package xds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The secrets a sidecar's SDS server (the agent beside it) provides, and
// the bootstrap cluster that reaches it. Listeners and clusters name only
// these; Check refuses anything else.
const (
	// SecretCertificate is the workload's certificate chain and key.
	SecretCertificate = "default"
	// SecretRoots is the trust bundle.
	SecretRoots = "ROOTCA"
	// SDSCluster is the bootstrap cluster of the agent's SDS socket.
	SDSCluster = "sds-grpc"
)

// NoIdentity is the SAN a client expects of a service that has no known
// identity behind it yet. The CA never issues it, so nothing matches.
const NoIdentity = "spiffe://bulwark.invalid/no-identity"

// Secrets lists the secret names every proxy's SDS server provides.
var Secrets = []string{SecretCertificate, SecretRoots}

// SDSConfigSource points at the agent's SDS server over the SDSCluster.
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

// commonTLS presents the workload's certificate and trusts the bundle,
// accepting a peer only if one of its URI SANs matches one of sans.
func commonTLS(sans []*matcherv3.StringMatcher, alpn []string) *tlsv3.CommonTlsContext {
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

// trustDomainSAN matches any identity of the trust domain.
func trustDomainSAN(td string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + td + "/"}}
}

// exactSAN matches one identity.
func exactSAN(id string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}
}

// serverTLS terminates mutual TLS: the caller must present a certificate
// of the trust domain.
func serverTLS(td string) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
			RequireClientCertificate: wrapperspb.Bool(true),
			CommonTlsContext:         commonTLS([]*matcherv3.StringMatcher{trustDomainSAN(td)}, nil),
			// On a resumed TLS session Envoy does not mark the peer
			// certificate as validated, so authorization by identity would
			// deny the caller (envoyproxy/envoy#42668). Every connection
			// does a full handshake instead.
			SessionTicketKeysType:            &tlsv3.DownstreamTlsContext_DisableStatelessSessionResumption{DisableStatelessSessionResumption: true},
			DisableStatefulSessionResumption: true,
		})},
	}
}

// ClientTLS originates mutual TLS and accepts the server only if it is
// one of ids. An empty ids accepts no one.
func ClientTLS(ids []string) *corev3.TransportSocket {
	var sans []*matcherv3.StringMatcher
	if len(ids) == 0 {
		// Envoy reads an empty matcher list as "any SAN"; fail closed.
		ids = []string{NoIdentity}
	}
	for _, id := range ids {
		sans = append(sans, exactSAN(id))
	}
	return &corev3.TransportSocket{
		Name: "envoy.transport_sockets.tls",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: commonTLS(sans, nil),
		})},
	}
}

func plaintext() *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name:       "envoy.transport_sockets.raw_buffer",
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbufferv3.RawBuffer{})},
	}
}
