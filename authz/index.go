package authz

import (
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

	mu     sync.Mutex
	tables map[string]*Table
}

// NewIndex returns an index over snap; now decides expired mTLS
// exceptions.
func NewIndex(snap *model.Snapshot, now time.Time) *Index {
	return &Index{snap: snap, now: now, mesh: snap.Mesh(), policies: snap.AccessPolicies(), tables: map[string]*Table{}}
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
	for _, ep := range x.snap.Endpoints(svc.Namespace, svc.Name) {
		if !ep.Ready {
			continue
		}
		w := x.snap.Workload(ep.Namespace, ep.Workload)
		if w == nil {
			return true // unknown workload: do not hide the service
		}
		target := ep.PortFor(port.Name)
		if target == 0 {
			continue
		}
		if x.Table(w, target, port.Protocol).EvaluateAny(peer) != ReachNone {
			return true
		}
	}
	return false
}
