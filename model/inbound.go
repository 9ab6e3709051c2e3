package model

// InboundPort is a port a workload's app listens on behind its sidecar:
// a target port of a service the workload backs, with the protocol the
// service speaks there. Its sidecar has one inbound listener per
// InboundPort.
type InboundPort struct {
	Port     uint32 // the target port
	Protocol Protocol
}

// InboundPorts returns the inbound ports of w: the distinct target ports
// of the services it backs, in the order w.Services lists the services
// and each service lists its ports. A target port that several service
// ports share comes once, with the protocol of the first; validation
// guarantees they agree. service looks up a service by namespace and
// name; a service it returns nil for is skipped. The result is a new
// slice the caller owns; nil when w backs no service.
func (w *Workload) InboundPorts(service func(namespace, name string) *Service) []InboundPort {
	var out []InboundPort
	seen := map[uint32]bool{}
	for _, name := range w.Services {
		svc := service(w.Namespace, name)
		if svc == nil {
			continue
		}
		for _, p := range svc.Ports {
			if seen[p.TargetPort] {
				continue
			}
			seen[p.TargetPort] = true
			out = append(out, InboundPort{Port: p.TargetPort, Protocol: p.Protocol})
		}
	}
	return out
}

// InboundPorts returns w.InboundPorts with the services of the snapshot.
func (s *Snapshot) InboundPorts(w *Workload) []InboundPort { return w.InboundPorts(s.Service) }
