package model

import (
	"time"

	memdb "github.com/hashicorp/go-memdb"
)

// Snapshot is a consistent, read-only view of the store at one moment.
// It is cheap to take, safe for concurrent use, and never changes: later
// writes to the store are not visible through it. Objects it returns are
// shared and must not be modified.
type Snapshot struct {
	txn *memdb.Txn
}

// Mesh returns the mesh-wide configuration.
func (s *Snapshot) Mesh() Mesh {
	raw, err := s.txn.First(TableMesh, "id", "mesh")
	if err != nil || raw == nil {
		return Mesh{TrustDomain: DefaultTrustDomain}
	}
	return raw.(*meshRow).Mesh
}

func list[T any](s *Snapshot, table, index string, args ...any) []T {
	it, err := s.txn.Get(table, index, args...)
	if err != nil {
		panic("model: " + err.Error()) // only a schema mistake gets here
	}
	var out []T
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(T))
	}
	return out
}

func first[T any](s *Snapshot, table, key string) T {
	raw, err := s.txn.First(table, "id", key)
	if err != nil {
		panic("model: " + err.Error())
	}
	var zero T
	if raw == nil {
		return zero
	}
	return raw.(T)
}

// Services returns every service, sorted by key.
func (s *Snapshot) Services() []*Service { return list[*Service](s, TableServices, "id") }

// Service returns the service namespace/name, or nil.
func (s *Snapshot) Service(namespace, name string) *Service {
	return first[*Service](s, TableServices, namespace+"/"+name)
}

// Workloads returns every workload, sorted by key.
func (s *Snapshot) Workloads() []*Workload { return list[*Workload](s, TableWorkloads, "id") }

// Workload returns the workload namespace/name, or nil.
func (s *Snapshot) Workload(namespace, name string) *Workload {
	return first[*Workload](s, TableWorkloads, namespace+"/"+name)
}

// Endpoints returns the endpoints of the service namespace/name, sorted by
// address.
func (s *Snapshot) Endpoints(namespace, service string) []*Endpoint {
	return list[*Endpoint](s, TableEndpoints, "service", namespace+"/"+service)
}

// AllEndpoints returns every endpoint, sorted by key.
func (s *Snapshot) AllEndpoints() []*Endpoint { return list[*Endpoint](s, TableEndpoints, "id") }

// MTLSPolicies returns every mTLS policy, sorted by key.
func (s *Snapshot) MTLSPolicies() []*MTLSPolicy { return list[*MTLSPolicy](s, TableMTLS, "id") }

// AccessPolicies returns every access policy, sorted by key.
func (s *Snapshot) AccessPolicies() []*AccessPolicy { return list[*AccessPolicy](s, TableAccess, "id") }

// MTLSMode decides the inbound mTLS mode of a target port of w at now;
// see ResolveMTLS.
func (s *Snapshot) MTLSMode(w *Workload, port uint32, now time.Time) MTLSDecision {
	return ResolveMTLS(s.Mesh(), s.MTLSPolicies(), w, port, now)
}

// Watch returns, for each table, a channel that is closed as soon as that
// table changes after this snapshot was taken.
func (s *Snapshot) Watch() map[string]<-chan struct{} {
	out := make(map[string]<-chan struct{}, len(Tables))
	for _, t := range Tables {
		it, err := s.txn.Get(t, "id")
		if err != nil {
			panic("model: " + err.Error())
		}
		out[t] = it.WatchCh()
	}
	return out
}

// ChangedSince returns the tables that changed between prev, an earlier
// snapshot of the same store, and s: every table a write changed in
// between, even if a later write put back what it held; every table if
// prev is nil. The answer depends on the two snapshots alone: unlike
// reading the channels of prev's Watch, which go-memdb closes only after
// a write is already visible, it cannot miss a write that s holds,
// however soon after the write s was taken. It compares the tables'
// watch channels, so it costs the same whatever their size: a table that
// changes has its channel closed (see Watch), so it cannot have the same
// one in s as in prev; one that does not change keeps its channel.
func (s *Snapshot) ChangedSince(prev *Snapshot) map[string]bool {
	out := make(map[string]bool, len(Tables))
	if prev == nil {
		for _, t := range Tables {
			out[t] = true
		}
		return out
	}
	before, now := prev.Watch(), s.Watch()
	for _, t := range Tables {
		if before[t] != now[t] {
			out[t] = true
		}
	}
	return out
}
