package v1alpha1

// MeshSpec is the body of a Mesh document of a mesh file: the
// mesh-wide settings and, when there is no Kubernetes, the services and
// workloads. Mesh is not a custom resource: in a cluster the same
// settings come from flags and from an MTLSPolicy in the control plane's
// namespace.
type MeshSpec struct {
	// TrustDomain is the SPIFFE trust domain; empty means cluster.local.
	TrustDomain string `json:"trustDomain,omitempty"`
	// MTLS is the mesh-wide mTLS mode; STRICT unless set.
	MTLS MeshMTLS `json:"mtls,omitempty"`
	// Authorization sets what workloads no ALLOW policy selects accept,
	// and whether sidecars get only what their identity may call.
	Authorization Authorization `json:"authorization,omitempty"`
	Services      []Service     `json:"services,omitempty"`
	Workloads     []Workload    `json:"workloads,omitempty"`
}

// MeshMTLS is the mesh-wide mTLS mode.
type MeshMTLS struct {
	// Mode defaults to STRICT.
	Mode      MTLSMode   `json:"mode,omitempty"`
	Exception *Exception `json:"exception,omitempty"`
}

// Authorization holds the mesh-wide authorization settings.
type Authorization struct {
	// Default is what workloads no ALLOW policy selects accept: deny (the
	// default) or allow-mesh.
	Default string `json:"default,omitempty"`
	// ScopeConfig, on by default, sends a transparent sidecar only the
	// services its identity may call.
	ScopeConfig *bool `json:"scopeConfig,omitempty"`
}

// Service is a named set of ports served by the workloads that back it.
type Service struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Address is the service's virtual IP: what apps call under
	// transparent capture.
	Address string        `json:"address,omitempty"`
	Ports   []ServicePort `json:"ports"`
}

// ServicePort is one port of a service.
type ServicePort struct {
	// Name tells ports of one service apart; optional for one port.
	Name string `json:"name,omitempty"`
	// Port is the port callers use.
	Port uint32 `json:"port"`
	// TargetPort is the port the workloads listen on; zero means Port.
	TargetPort uint32 `json:"targetPort,omitempty"`
	// Protocol is http or tcp.
	Protocol string `json:"protocol"`
}

// Workload is one instance of an application with its sidecar.
type Workload struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// ServiceAccount names the workload's identity in its namespace.
	ServiceAccount string            `json:"serviceAccount,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	// Address is where other sidecars reach this workload's sidecar.
	Address string `json:"address"`
	// Services lists the services of the workload's namespace it backs.
	Services []string `json:"services,omitempty"`
	// LocalAddress is the address shared by the app and its sidecar;
	// 127.0.0.1 unless set.
	LocalAddress string `json:"localAddress,omitempty"`
	// Capture is explicit (the default) or transparent.
	Capture string `json:"capture,omitempty"`
	// Upstreams are the service ports the app calls through its sidecar
	// under explicit capture.
	Upstreams []Upstream `json:"upstreams,omitempty"`
}

// Upstream is a service port a workload calls through its sidecar.
type Upstream struct {
	Service string `json:"service"`
	// Namespace of the service; empty means the caller's.
	Namespace string `json:"namespace,omitempty"`
	// Port is the service port; optional when the service has one.
	Port uint32 `json:"port,omitempty"`
	// LocalPort is where the sidecar listens for the app; zero means Port.
	LocalPort uint32 `json:"localPort,omitempty"`
}
