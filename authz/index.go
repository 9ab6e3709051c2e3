package authz

import (
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

// Index compiles tables from one model snapshot on demand and keeps
// them, so a translation pass over many proxies compiles each workload
// port once. Safe for concurrent use.
type Index struct {
	snap     *model.Snapshot
	now      time.Time
	mesh     model.Mesh
	policies []*model.AccessPolicy

	mu       sync.Mutex
	tables   map[string]*Table
	backends map[portKey]backends
}

// portKey names a service port within one snapshot.
type portKey struct {
	svc  *model.Service
	port string
}

// backends is what decides who may call a service port: the tables of
// the ready workloads behind it, or unknown when one of them is not a
// workload of the model (whose policy is then not known here).
type backends struct {
	unknown bool
	tables  []*Table
}

// NewIndex returns an index over snap; now decides expired mTLS
// exceptions.
func NewIndex(snap *model.Snapshot, now time.Time) *Index {
	return &Index{snap: snap, now: now, mesh: snap.Mesh(), policies: snap.AccessPolicies(),
		tables: map[string]*Table{}, backends: map[portKey]backends{}}
}

// Next returns an index over snap, a later snapshot in which only
// endpoints changed, keeping the compiled tables (they do not depend on
// endpoints) and what is behind every service port but those of the
// services dirty reports.
func (x *Index) Next(snap *model.Snapshot, now time.Time, dirty func(*model.Service) bool) *Index {
	n := NewIndex(snap, now)
	x.mu.Lock()
	defer x.mu.Unlock()
	n.tables = maps.Clone(x.tables)
	for _, svc := range snap.Services() {
		if dirty(svc) {
			continue
		}
		for _, p := range svc.Ports {
			if b, ok := x.backends[portKey{svc, p.Name}]; ok {
				n.backends[portKey{svc, p.Name}] = b
			}
		}
	}
	return n
}

// Table returns the table of target port port of w.
func (x *Index) Table(w *model.Workload, port uint32, proto model.Protocol) *Table {
	key := w.Key() + ":" + strconv.FormatUint(uint64(port), 10) + ":" + string(proto)
	x.mu.Lock()
	defer x.mu.Unlock()
	if t, ok := x.tables[key]; ok {
		return t
	}
	t := Compile(x.mesh, x.policies, w, port, proto, x.snap.MTLSMode(w, port, x.now).Mode)
	x.tables[key] = t
	return t
}

// MayCall reports whether peer may send anything at all to port of svc:
// whether some workload behind it admits some request from peer.
func (x *Index) MayCall(peer string, svc *model.Service, port *model.ServicePort) bool {
	b := x.backendsOf(svc, port)
	if b.unknown {
		return true // do not hide a service whose policy is not known
	}
	for _, t := range b.tables {
		if t.EvaluateAny(peer) != ReachNone {
			return true
		}
	}
	return false
}

// backendsOf collects, once per snapshot, the distinct tables behind a
// service port: every caller identity asks the same question of them.
func (x *Index) backendsOf(svc *model.Service, port *model.ServicePort) backends {
	key := portKey{svc, port.Name}
	x.mu.Lock()
	b, ok := x.backends[key]
	x.mu.Unlock()
	if ok {
		return b
	}
	seen := map[*Table]bool{}
	for _, ep := range x.snap.Endpoints(svc.Namespace, svc.Name) {
		if !ep.Ready {
			continue
		}
		w := x.snap.Workload(ep.Namespace, ep.Workload)
		if w == nil {
			b = backends{unknown: true}
			break
		}
		target := ep.PortFor(port.Name)
		if target == 0 {
			continue
		}
		t := x.Table(w, target, port.Protocol)
		if !seen[t] {
			seen[t] = true
			b.tables = append(b.tables, t)
		}
	}
	x.mu.Lock()
	x.backends[key] = b
	x.mu.Unlock()
	return b
}
