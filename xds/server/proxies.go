package server

import (
	"slices"
	"strings"
	"time"
)

// proxy is an Envoy the server admitted: the node ID it sent, the
// workload that names and the identity its certificate proved. A proxy
// is never modified; one that leaves and comes back is a new proxy, so
// the run loop can tell a reconnect (which needs its configuration set
// again) by pointer.
type proxy struct {
	id          string // the Envoy node ID; see model.NodeID
	namespace   string
	workload    string
	identity    string // SPIFFE ID of its verified client certificate
	connectedAt time.Time
}

// workloadKey returns the "namespace/name" of the workload it serves.
func (p *proxy) workloadKey() string { return p.namespace + "/" + p.workload }

// proxiesChanged tells the run loop that a proxy connected or left. It
// never blocks: one pending signal stands for any number of changes, as
// the run loop reads the whole set when it wakes.
func (s *Server) proxiesChanged() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// connected returns the proxies connected now, sorted by node ID.
func (s *Server) connected() []*proxy {
	s.mu.Lock()
	out := make([]*proxy, 0, len(s.proxies))
	for _, ps := range s.proxies {
		out = append(out, ps.proxy)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *proxy) int { return strings.Compare(a.id, b.id) })
	return out
}
