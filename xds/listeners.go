package xds

import (
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/internal/protoany"
	"github.com/bulwarkmesh/bulwark/model"
)

// inboundListener accepts calls from other sidecars on the workload's
// address and target port and hands them to the app. Its filter chains
// follow the port's mTLS mode: STRICT has only the mutual TLS chain,
// DISABLE only a plaintext one, PERMISSIVE both, told apart by the TLS
// inspector. The mutual TLS chain carries the revocation epoch.
func inboundListener(w *model.Workload, in model.InboundPort, table *authz.Table, td string, epoch uint64) *listenerv3.Listener {
	name := InboundName(in.Port)
	mode := table.Mode
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(w.Address, in.Port),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
	}
	mtls := &listenerv3.FilterChain{
		Name:            "mtls",
		TransportSocket: serverTLS(td),
		Filters:         inboundFilters(name, in.Protocol, true, table),
		Metadata:        revocationMetadata(epoch),
	}
	plain := &listenerv3.FilterChain{
		Name:    "plaintext",
		Filters: inboundFilters(name, in.Protocol, false, table),
	}
	switch mode {
	case model.MTLSDisable:
		l.FilterChains = []*listenerv3.FilterChain{plain}
	case model.MTLSPermissive:
		mtls.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "tls"}
		plain.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer"}
		l.FilterChains = []*listenerv3.FilterChain{mtls, plain}
		l.ListenerFilters = []*listenerv3.ListenerFilter{tlsInspector()}
	default:
		l.FilterChains = []*listenerv3.FilterChain{mtls}
	}
	return l
}

func tlsInspector() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:       "envoy.filters.listener.tls_inspector",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: protoany.Must(&tlsinspectorv3.TlsInspector{})},
	}
}

// inboundFilters are the network filters of an inbound chain: on TCP,
// the RBAC filter and the TCP proxy; on HTTP, the connection manager with
// the RBAC and router HTTP filters. On the mutual TLS chain a peer whose
// certificate has more than one URI SAN is refused first (OneURISANRule).
// On HTTP the app learns who called: on the mutual TLS chain any
// x-forwarded-client-cert is replaced with the verified peer's URI; on
// plaintext it is stripped, so a caller cannot claim an identity it did
// not prove.
func inboundFilters(name string, proto model.Protocol, mtls bool, table *authz.Table) []*listenerv3.Filter {
	if proto != model.ProtocolHTTP {
		var fs []*listenerv3.Filter
		if mtls {
			fs = append(fs, oneURISANNetworkFilter(statPrefix(name)+".one_uri_san."))
		}
		return append(fs,
			&listenerv3.Filter{
				Name:       authz.NetworkFilterName,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: protoany.Must(table.NetworkConfig(statPrefix(name) + "."))},
			},
			terminalFilter(name, proto),
		)
	}
	hcm := httpConnectionManager(name)
	// A percent-encoded slash could smuggle "/admin" past a path rule;
	// reject such requests before authorization sees them.
	hcm.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_REJECT_REQUEST
	hcm.HttpFilters = append([]*hcmv3.HttpFilter{{
		Name:       authz.HTTPFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: protoany.Must(table.HTTPConfig())},
	}}, hcm.HttpFilters...)
	if mtls {
		hcm.HttpFilters = append([]*hcmv3.HttpFilter{oneURISANHTTPFilter()}, hcm.HttpFilters...)
		hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
		hcm.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true}
	} else {
		hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE
	}
	return []*listenerv3.Filter{{
		Name:       "envoy.filters.network.http_connection_manager",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: protoany.Must(hcm)},
	}}
}

// outboundListener accepts the app's calls to one upstream service port
// on the workload's local address.
// Under transparent capture it binds nothing: it stands for the service's
// address and port, and virtualOutbound hands it the connections whose
// original destination that is.
//
// A TCP port's chain carries the revocation epoch: each of its
// connections is tied to one mutual TLS connection upstream for its
// whole life, which replacing the cluster does not close (only pooled,
// HTTP, connections are), so the app's side is drained instead.
func outboundListener(w *model.Workload, up upstream, epoch uint64) *listenerv3.Listener {
	name := OutboundName(up.svc, up.port.Port)
	chain := &listenerv3.FilterChain{Filters: []*listenerv3.Filter{terminalFilter(name, up.port.Protocol)}}
	if up.port.Protocol != model.ProtocolHTTP {
		chain.Metadata = revocationMetadata(epoch)
	}
	l := &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(w.LocalAddress, up.localPort),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		FilterChains:     []*listenerv3.FilterChain{chain},
	}
	if w.Transparent() {
		l.Address = socketAddress(up.svc.Address, up.port.Port)
		l.BindToPort = wrapperspb.Bool(false)
	}
	return l
}

// virtualInbound takes every redirected inbound connection. A connection
// to a port no service declares matches no chain and is closed. A
// workload that backs no service has no chain at all, which Envoy
// refuses: its listener closes every connection with a default chain to
// BlackHoleCluster instead.
func virtualInbound(chains []*listenerv3.FilterChain, inspectTLS bool) *listenerv3.Listener {
	l := &listenerv3.Listener{
		Name:             VirtualInbound,
		Address:          socketAddress("0.0.0.0", model.InboundCapturePort),
		TrafficDirection: corev3.TrafficDirection_INBOUND,
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       "envoy.filters.listener.original_dst",
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: protoany.Must(&originaldstv3.OriginalDst{})},
		}},
		FilterChains: chains,
	}
	if len(chains) == 0 {
		l.DefaultFilterChain = tcpProxyChain(BlackHoleCluster, false)
	}
	if inspectTLS {
		l.ListenerFilters = append(l.ListenerFilters, tlsInspector())
	}
	return l
}

// virtualOutbound takes every redirected outbound connection and hands it
// to the listener of its original destination; a destination outside the
// mesh is passed through unchanged.
func virtualOutbound() *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:               VirtualOutbound,
		Address:            socketAddress("0.0.0.0", model.OutboundCapturePort),
		TrafficDirection:   corev3.TrafficDirection_OUTBOUND,
		UseOriginalDst:     wrapperspb.Bool(true),
		DefaultFilterChain: tcpProxyChain(PassthroughCluster, true),
	}
}

// tcpProxyChain is a filter chain, named after cluster, that proxies
// every connection to it, logging each when log is set.
func tcpProxyChain(cluster string, log bool) *listenerv3.FilterChain {
	proxy := &tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}}
	if log {
		proxy.AccessLog = accessLog()
	}
	return &listenerv3.FilterChain{
		Name: cluster,
		Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: protoany.Must(proxy)},
		}},
	}
}

// terminalFilter is the last network filter of a chain: an HTTP
// connection manager whose routes come from the route configuration
// called name, or a TCP proxy to the cluster called name.
func terminalFilter(name string, proto model.Protocol) *listenerv3.Filter {
	if proto == model.ProtocolHTTP {
		return &listenerv3.Filter{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: protoany.Must(httpConnectionManager(name))},
		}
	}
	return &listenerv3.Filter{
		Name: "envoy.filters.network.tcp_proxy",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: protoany.Must(&tcpproxyv3.TcpProxy{
			StatPrefix:       statPrefix(name),
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: name},
			AccessLog:        accessLog(),
		})},
	}
}

// httpConnectionManager is the HTTP connection manager of a listener
// whose routes are the route configuration routeName; every one is an
// edge of the mesh (guardEdge).
func httpConnectionManager(routeName string) *hcmv3.HttpConnectionManager {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: statPrefix(routeName),
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeName,
		}},
		// Routes and, later, authorization see the path as the app will:
		// "." and ".." segments resolved and repeated slashes merged.
		NormalizePath: wrapperspb.Bool(true),
		MergeSlashes:  true,
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: protoany.Must(&routerv3.Router{})},
		}},
		AccessLog: accessLog(),
	}
	guardEdge(hcm)
	return hcm
}

// accessLog writes one JSON line per request or connection to Envoy's
// stdout. "path" is :path as routing and authorization saw it, after
// normalization; it is as long as the request allowed (Envoy refuses
// request headers over 60 KiB). "request_id" is the ID the sidecar
// generated, "downstream" the connection's peer, neither of them what a
// caller claimed (guardEdge). A denial names its rule: "details" (HTTP)
// or "termination" (TCP) read rbac_access_denied_matched_policy[<rule>],
// ~one-uri-san included (OneURISANRule). (What dry-run
// rules would have done is in Envoy's shadow statistics, per rule: Envoy
// lets the enforced verdict's metadata replace the shadow one's, so the
// log cannot carry it.)
func accessLog() []*accesslogv3.AccessLog {
	fields := map[string]string{
		"start":       "%START_TIME%",
		"method":      "%REQ(:METHOD)%",
		"path":        "%REQ(:PATH)%",
		"status":      "%RESPONSE_CODE%",
		"flags":       "%RESPONSE_FLAGS%",
		"details":     "%RESPONSE_CODE_DETAILS%",
		"termination": "%CONNECTION_TERMINATION_DETAILS%",
		"peer":        "%DOWNSTREAM_PEER_URI_SAN%",
		"downstream":  "%DOWNSTREAM_REMOTE_ADDRESS%",
		"upstream":    "%UPSTREAM_HOST%",
		"cluster":     "%UPSTREAM_CLUSTER%",
		"duration_ms": "%DURATION%",
		"request_id":  "%REQ(X-REQUEST-ID)%",
	}
	st := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for k, v := range fields {
		st.Fields[k] = structpb.NewStringValue(v)
	}
	return []*accesslogv3.AccessLog{{
		Name: "envoy.access_loggers.stdout",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: protoany.Must(&streamv3.StdoutAccessLog{
			AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: st},
			}},
		})},
	}}
}
