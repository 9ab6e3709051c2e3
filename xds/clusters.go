package xds

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// mtlsMetadataKey marks, in an endpoint's transport socket match
// metadata, an endpoint reached without mutual TLS.
const mtlsMetadataKey = "bulwark.dev/mtls"

// staticCluster reaches the app at a fixed local address.
func staticCluster(name, addr string, port uint32) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       duration(connectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(addr, port)},
			}},
		},
	}
}

// passthroughCluster reaches whatever address a connection was bound for.
func passthroughCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       duration(connectTimeout),
	}
}

// blackHoleCluster has no endpoints: a connection sent there is closed.
func blackHoleCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 BlackHoleCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       duration(connectTimeout),
		LoadAssignment:       &endpointv3.ClusterLoadAssignment{ClusterName: BlackHoleCluster},
	}
}

// edsCluster reaches a service port through the endpoints that ADS sends
// under the same name, over mutual TLS that accepts only the identities
// behind the service. An endpoint whose port has mTLS disabled is marked
// in its metadata and reached in plaintext. The cluster carries the
// revocation epoch.
func edsCluster(name string, ids []string, epoch uint64) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Metadata:        revocationMetadata(epoch),
		TransportSocket: contract.ClientTLS(ids),
		TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{{
			Name:            "plaintext",
			Match:           &structpb.Struct{Fields: map[string]*structpb.Value{mtlsMetadataKey: structpb.NewStringValue("disabled")}},
			TransportSocket: plaintext(),
		}},
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig:   adsSource(),
			ServiceName: name,
		},
		ConnectTimeout: duration(connectTimeout),
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
	}
}

// loadAssignment lists the ready endpoints of a service port. An empty
// assignment is still sent, so the cluster finishes warming and calls
// fail fast with 503 instead of hanging.
func loadAssignment(snap *model.Snapshot, svc *model.Service, port *model.ServicePort, now time.Time) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, ep := range snap.Endpoints(svc.Namespace, svc.Name) {
		if !ep.Ready {
			continue
		}
		p := ep.PortFor(port.Name)
		if p == 0 {
			continue
		}
		lb := lbEndpoint(ep.Address, p)
		// Plaintext only toward a known workload whose port says so; an
		// endpoint we know nothing about gets mutual TLS.
		if w := snap.Workload(ep.Namespace, ep.Workload); w != nil && ep.Workload != "" &&
			snap.MTLSMode(w, p, now).Mode == model.MTLSDisable {
			lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				"envoy.transport_socket_match": {Fields: map[string]*structpb.Value{mtlsMetadataKey: structpb.NewStringValue("disabled")}},
			}}
		}
		lbs = append(lbs, lb)
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: OutboundName(svc, port.Port)}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

func lbEndpoint(addr string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: socketAddress(addr, port),
	}}}
}
