package xds

import (
	"fmt"

	"github.com/bulwarkmesh/bulwark/model"
)

// Resource names. They are stable across releases: dashboards and alerts
// are built on the stats Envoy names after them.
//
//	inbound|<targetPort>                 listener, route configuration and
//	                                     cluster for traffic arriving at a
//	                                     workload's port and handed to its app
//	outbound|<port>|<service>.<namespace> listener, route configuration,
//	                                     cluster and load assignment for calls
//	                                     from the app to a service port
//
// Under transparent capture a sidecar also has:
//
//	virtualInbound                       listener on 0.0.0.0:15006 that takes all
//	                                     redirected inbound traffic and picks a
//	                                     filter chain by original destination port
//	virtualOutbound                      listener on 0.0.0.0:15001 that takes all
//	                                     redirected outbound traffic and hands it to
//	                                     the listener of the service address called
//	PassthroughCluster                   cluster to the original destination, for
//	                                     outbound calls to anything not in the mesh
//	BlackHoleCluster                     cluster without endpoints: the inbound
//	                                     side of a workload that backs no service
//	                                     sends every connection there (closed)
//
// The Envoy node ID of a sidecar is "<namespace>/<workload>" (see
// model.NodeID).

// Names of the transparent capture resources.
const (
	VirtualInbound     = "virtualInbound"
	VirtualOutbound    = "virtualOutbound"
	PassthroughCluster = "PassthroughCluster"
	BlackHoleCluster   = "BlackHoleCluster"
)

// InboundName names the inbound resources for a workload's target port.
func InboundName(targetPort uint32) string { return fmt.Sprintf("inbound|%d", targetPort) }

// OutboundName names the outbound resources for a service port.
func OutboundName(svc *model.Service, port uint32) string {
	return fmt.Sprintf("outbound|%d|%s", port, svc.Host())
}

// statPrefix turns a resource name into a stat prefix without the '|'
// that makes stats awkward to query.
func statPrefix(name string) string {
	b := []byte(name)
	for i, c := range b {
		if c == '|' {
			b[i] = '_'
		}
	}
	return string(b)
}
