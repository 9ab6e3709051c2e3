package model

import (
	"slices"
	"time"
)

// MTLSException is one inbound port of one workload that is weaker than
// STRICT, or that a policy sets weaker under an exception that has run
// out (the port is STRICT again, but the policy still says otherwise).
type MTLSException struct {
	Workload string // "namespace/name"
	Port     uint32 // the target port
	// Decision is how the port's mode was decided; Decision.Expired
	// tells the second kind from the first.
	Decision MTLSDecision
}

// MTLSExceptions lists the exceptions of st at now: what an auditor asks
// for. Workloads come in the order st lists them, each one's ports in
// increasing order. Nil when every port of every workload is STRICT as
// configured.
func MTLSExceptions(st *State, now time.Time) []MTLSException {
	services := make(map[string]*Service, len(st.Services))
	for _, s := range st.Services {
		services[s.Key()] = s
	}
	service := func(namespace, name string) *Service { return services[namespace+"/"+name] }
	var out []MTLSException
	for _, w := range st.Workloads {
		var ports []uint32
		for _, p := range w.InboundPorts(service) {
			ports = append(ports, p.Port)
		}
		slices.Sort(ports)
		for _, p := range ports {
			d := ResolveMTLS(st.Mesh, st.MTLS, w, p, now)
			if d.Mode.Weaker() || d.Expired {
				out = append(out, MTLSException{Workload: w.Key(), Port: p, Decision: d})
			}
		}
	}
	return out
}
