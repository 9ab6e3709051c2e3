package model

import (
	"maps"
	"slices"
	"strings"
)

// Protocol is what a service port speaks. It decides whether the sidecar
// sees HTTP requests (and can route and authorize them by method and path)
// or only a byte stream.
type Protocol string

// Protocols a service port may declare.
const (
	ProtocolHTTP Protocol = "http"
	ProtocolTCP  Protocol = "tcp"
)

// DefaultTrustDomain is the SPIFFE trust domain of a mesh that names none.
const DefaultTrustDomain = "cluster.local"

// DefaultNamespace is the namespace of an object that names none, as in
// Kubernetes.
const DefaultNamespace = "default"

// DefaultServiceAccount is the service account of a workload that names
// none, as in Kubernetes.
const DefaultServiceAccount = "default"

// DefaultLocalAddress is where, by default, a workload's app listens and
// its outbound listeners bind: the pod's own loopback.
const DefaultLocalAddress = "127.0.0.1"

// Mesh is the mesh-wide configuration. A store holds exactly one.
type Mesh struct {
	// Name identifies the mesh in logs; it has no effect on traffic.
	Name string
	// TrustDomain is the SPIFFE trust domain every identity belongs to.
	TrustDomain string
	// MTLS is the mesh-wide mTLS mode.
	MTLS MeshMTLS
	// Authorization holds the mesh-wide authorization settings.
	Authorization Authorization
}

// ServicePort is one port of a service.
type ServicePort struct {
	// Name tells ports of one service apart; optional for a service with
	// one port.
	Name string
	// Port is the port callers use.
	Port uint32
	// TargetPort is the port the workloads behind the service listen on.
	// Zero means the same as Port.
	TargetPort uint32
	// Protocol is http or tcp.
	Protocol Protocol
}

// Service is a named set of ports served by the workloads that back it.
type Service struct {
	Namespace string
	Name      string
	// Address is the service's virtual IP (a ClusterIP): what apps call
	// under transparent capture. Optional; a service without one is
	// reachable only through explicit upstreams.
	Address string
	Ports   []ServicePort
}

// Key returns "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Host returns the name callers know the service by: "name.namespace".
func (s *Service) Host() string { return s.Name + "." + s.Namespace }

// Port returns the port with the given number, or nil.
func (s *Service) Port(port uint32) *ServicePort {
	for i := range s.Ports {
		if s.Ports[i].Port == port {
			return &s.Ports[i]
		}
	}
	return nil
}

// Upstream is a service port a workload calls through its sidecar. With
// explicit capture the app calls LocalAddress:LocalPort and the sidecar
// carries the call to a workload behind the service.
type Upstream struct {
	// Service is the name of the service called.
	Service string
	// Namespace of the service; empty means the caller's namespace.
	Namespace string
	// Port is the service port called; it may be left out when the
	// service has exactly one port.
	Port uint32
	// LocalPort is where the sidecar listens for the app's calls; zero
	// means the same as Port.
	LocalPort uint32
}

// ServiceKey returns the "namespace/name" of the called service.
func (u *Upstream) ServiceKey() string { return u.Namespace + "/" + u.Service }

// Capture is how a workload's traffic reaches its sidecar.
type Capture string

// Capture modes.
const (
	// CaptureExplicit: the app calls its upstreams at
	// LocalAddress:localPort, and peers reach the sidecar's inbound
	// listeners at Address:targetPort. Needs no privileges.
	CaptureExplicit Capture = "explicit"
	// CaptureTransparent: iptables in the workload's network namespace
	// redirects inbound traffic to InboundCapturePort and outbound
	// traffic to OutboundCapturePort; apps call services by their
	// addresses, as in a pod.
	CaptureTransparent Capture = "transparent"
)

// Ports of a sidecar under transparent capture.
const (
	OutboundCapturePort = 15001
	InboundCapturePort  = 15006
)

// Workload is one instance of an application with its sidecar: a pod in
// Kubernetes, a process on a host elsewhere.
type Workload struct {
	Namespace string
	Name      string
	// ServiceAccount names the identity of the workload within its
	// namespace.
	ServiceAccount string
	Labels         map[string]string
	// Address is where other sidecars reach this workload's sidecar (the
	// pod IP).
	Address string
	// Services lists the services, in the workload's namespace, that this
	// workload backs.
	Services []string
	// LocalAddress is the address inside the workload shared by the app
	// and its sidecar: the app listens on LocalAddress:targetPort and the
	// sidecar's outbound listeners bind LocalAddress:localPort. In a pod
	// it is 127.0.0.1; several workloads on one host each need their own.
	LocalAddress string
	// Capture is explicit (the default) or transparent.
	Capture Capture
	// Upstreams lists the service ports the app calls through its
	// sidecar, under explicit capture. Under transparent capture the app
	// calls any service that has an address.
	Upstreams []Upstream
}

// Transparent reports whether the workload's traffic is captured.
func (w *Workload) Transparent() bool { return w.Capture == CaptureTransparent }

// Key returns "namespace/name".
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// Backs reports whether the workload backs the named service of its own
// namespace.
func (w *Workload) Backs(service string) bool { return slices.Contains(w.Services, service) }

// EndpointPort is one port an endpoint serves, named after the service
// port it serves.
type EndpointPort struct {
	Name string
	Port uint32
}

// Endpoint is one address behind a service. The file source derives
// endpoints from workloads; the Kubernetes source from EndpointSlices.
type Endpoint struct {
	// Namespace and Service name the service this endpoint backs.
	Namespace string
	Service   string
	Address   string
	Ports     []EndpointPort
	// Ready endpoints receive traffic; others are left out.
	Ready bool
	// Workload names the workload (pod) at this address in Namespace, or
	// is empty when unknown.
	Workload string
}

// Key returns "namespace/service/address".
func (e *Endpoint) Key() string { return e.Namespace + "/" + e.Service + "/" + e.Address }

// ServiceKey returns the "namespace/name" of the service.
func (e *Endpoint) ServiceKey() string { return e.Namespace + "/" + e.Service }

// PortFor returns the endpoint's port for the named service port, or 0
// when it serves none.
func (e *Endpoint) PortFor(name string) uint32 {
	for _, p := range e.Ports {
		if p.Name == name {
			return p.Port
		}
	}
	return 0
}

// NodeID returns the Envoy node ID of the sidecar of a workload:
// "namespace/name".
func NodeID(namespace, workload string) string { return namespace + "/" + workload }

// ParseNodeID splits a node ID made by NodeID. It reports false for
// anything else.
func ParseNodeID(id string) (namespace, workload string, ok bool) {
	ns, name, found := strings.Cut(id, "/")
	if !found || validLabel(ns) != nil || validLabel(name) != nil {
		return "", "", false
	}
	return ns, name, true
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
