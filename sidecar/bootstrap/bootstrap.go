package bootstrap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/bulwarkmesh/bulwark/internal/protoany"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// XDSCluster is the name of the static cluster that reaches the control
// plane.
const XDSCluster = "bulwark-xds"

// MaxDownstreamConnections caps the connections a sidecar accepts.
const MaxDownstreamConnections = 50000

// DefaultAdminAddress is where a sidecar's admin interface listens unless
// told otherwise: loopback only, never the pod's address.
const DefaultAdminAddress = "127.0.0.1:15000"

// Config describes one sidecar's bootstrap.
type Config struct {
	// NodeID is the Envoy node ID, "<namespace>/<workload>". Required.
	NodeID string
	// Cluster is the Envoy node cluster, shown in Envoy's logs and stats;
	// defaults to the node ID's namespace.
	Cluster string
	// XDSAddress is the control plane's ADS address, host:port. A host
	// name is resolved by Envoy (and re-resolved as it changes). Required.
	XDSAddress string
	// AdminAddress is where the admin interface listens, ip:port.
	// Defaults to DefaultAdminAddress.
	AdminAddress string
	// SDSSocket is the agent's SDS Unix socket, which serves the
	// workload's certificate and the trust bundle. Required.
	SDSSocket string
	// ControlPlaneID is the SPIFFE ID the control plane must present;
	// the proxy talks to nothing else. Required.
	ControlPlaneID string
}

// Build returns the bootstrap for cfg, validated against Envoy's field
// rules.
func Build(cfg Config) (*bootstrapv3.Bootstrap, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("bootstrap: node ID is required")
	}
	if cfg.AdminAddress == "" {
		cfg.AdminAddress = DefaultAdminAddress
	}
	if cfg.SDSSocket == "" {
		return nil, errors.New("bootstrap: the SDS socket is required: the proxy gets its certificate from the agent")
	}
	if !strings.HasPrefix(cfg.ControlPlaneID, "spiffe://") {
		return nil, fmt.Errorf("bootstrap: control plane ID %q is not a SPIFFE ID", cfg.ControlPlaneID)
	}
	if cfg.Cluster == "" {
		cfg.Cluster = cfg.NodeID
		for i := range cfg.NodeID {
			if cfg.NodeID[i] == '/' {
				cfg.Cluster = cfg.NodeID[:i]
				break
			}
		}
	}
	adminHost, adminPort, err := splitHostPort(cfg.AdminAddress)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: admin address: %w", err)
	}
	if _, err := netip.ParseAddr(adminHost); err != nil {
		return nil, fmt.Errorf("bootstrap: admin address %q: the host must be an IP address", cfg.AdminAddress)
	}
	xdsHost, xdsPort, err := splitHostPort(cfg.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xDS address: %w", err)
	}

	// ADS is mutual TLS: the proxy presents its own certificate (from the
	// agent, over SDS) and accepts only the control plane's identity.
	xdsCluster := &clusterv3.Cluster{
		Name:            XDSCluster,
		ConnectTimeout:  durationpb.New(5 * time.Second),
		TransportSocket: contract.ClientTLS([]string{cfg.ControlPlaneID}),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress(xdsHost, xdsPort),
				}},
			}}}},
		},
		TypedExtensionProtocolOptions: http2Only(),
	}
	if _, err := netip.ParseAddr(xdsHost); err == nil {
		xdsCluster.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	} else {
		xdsCluster.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	}

	ads := &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
	b := &bootstrapv3.Bootstrap{
		// A sidecar refuses connections beyond this many rather than run
		// out of file descriptors and fail in less predictable ways.
		OverloadManager: &overloadv3.OverloadManager{
			ResourceMonitors: []*overloadv3.ResourceMonitor{{
				Name: "envoy.resource_monitors.global_downstream_max_connections",
				ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: protoany.Must(&downstreamv3.DownstreamConnectionsConfig{
					MaxActiveDownstreamConnections: MaxDownstreamConnections,
				})},
			}},
		},
		Node: &corev3.Node{Id: cfg.NodeID, Cluster: cfg.Cluster},
		Admin: &bootstrapv3.Admin{
			Address: socketAddress(adminHost, adminPort),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{xdsCluster, sdsCluster(cfg.SDSSocket)},
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster}},
				}},
				SetNodeOnFirstMessageOnly: true,
			},
			CdsConfig: ads,
			LdsConfig: ads,
		},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// YAML renders a bootstrap as YAML with sorted keys.
func YAML(b *bootstrapv3.Bootstrap) ([]byte, error) {
	j, err := protojson.Marshal(b)
	if err != nil {
		return nil, err
	}
	// JSONToYAML re-parses the JSON, which also drops protojson's
	// deliberately unstable whitespace.
	return yaml.JSONToYAML(j)
}

// sdsCluster reaches the agent's SDS server on its Unix socket.
func sdsCluster(path string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 contract.SDSCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: contract.SDSCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: path}}},
				}},
			}}}},
		},
		TypedExtensionProtocolOptions: http2Only(),
	}
}

func http2Only() map[string]*anypb.Any {
	return map[string]*anypb.Any{
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protoany.Must(&httpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
				ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
						Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
					},
				},
			},
		}),
	}
}

func splitHostPort(hp string) (string, uint32, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", hp, err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("%q: %q is not a port", hp, port)
	}
	if host == "" {
		return "", 0, fmt.Errorf("%q: host is required", hp)
	}
	return host, uint32(n), nil
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}
