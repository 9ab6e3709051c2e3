// Package gen generates meshes for load tests: N services of M endpoints
// each, and P sidecar workloads spread over them.
package gen

import (
	"fmt"
	"time"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
)

// Namespace holds every generated object.
const Namespace = "bench"

// TrustDomain is the generated mesh's trust domain.
const TrustDomain = "bench.local"

// Spec sizes a generated mesh.
type Spec struct {
	Services  int // N services, each with one HTTP port and a virtual address
	Endpoints int // M ready endpoints per service
	Proxies   int // P sidecar workloads; proxy i backs service i mod N
}

// ProxyName is the workload name of proxy i.
func ProxyName(i int) string { return fmt.Sprintf("proxy-%d", i) }

// NodeID is the Envoy node ID of proxy i.
func NodeID(i int) string { return model.NodeID(Namespace, ProxyName(i)) }

// ServiceName is the name of service i.
func ServiceName(i int) string { return fmt.Sprintf("svc-%d", i) }

// ServiceAccount is the service account of proxy i's workload: that of
// the service it backs.
func (s Spec) ServiceAccount(i int) string { return ServiceName(i % s.Services) }

// State returns the mesh at generation gen. Every sidecar is transparent
// and the mesh allows every call, so each sidecar gets every service:
// the largest configuration a mesh of this size sends. Consecutive
// generations differ in every service's port and every endpoint's
// address: a full change, where every cluster, load assignment, listener
// and route of every sidecar is replaced.
func (s Spec) State(gen int) *model.State {
	st := &model.State{Mesh: model.Mesh{TrustDomain: TrustDomain, Authorization: model.Authorization{Default: model.DefaultAllowMesh}}}
	for i := 0; i < s.Services; i++ {
		name := ServiceName(i)
		st.Services = append(st.Services, &model.Service{Namespace: Namespace, Name: name, Address: ip(96, i),
			Ports: []model.ServicePort{{Name: "http", Port: uint32(8080 + gen%2), TargetPort: 8080, Protocol: model.ProtocolHTTP}}})
		for j := 0; j < s.Endpoints; j++ {
			// Generations alternate between two address ranges, so every
			// endpoint of every service moves.
			st.Endpoints = append(st.Endpoints, &model.Endpoint{Namespace: Namespace, Service: name,
				Address: ip(16+gen%2*64, i*s.Endpoints+j), Ready: true,
				Ports: []model.EndpointPort{{Name: "http", Port: 8080}}})
		}
	}
	for i := 0; i < s.Proxies; i++ {
		st.Workloads = append(st.Workloads, &model.Workload{Namespace: Namespace, Name: ProxyName(i), ServiceAccount: s.ServiceAccount(i),
			Address: ip(2, i), LocalAddress: "127.0.0.1", Capture: model.CaptureTransparent,
			Services: []string{ServiceName(i % s.Services)}})
	}
	return st
}

// MoveOneEndpoint moves the first endpoint of the first service to an
// address that depends on gen: a change to one endpoint.
func MoveOneEndpoint(st *model.State, gen int) {
	for _, e := range st.Endpoints {
		if e.Service == ServiceName(0) {
			e.Address = ip(200, gen)
			return
		}
	}
}

// ip returns 10.<a+i/65536>.<i/256%256>.<i%256>.
func ip(a, i int) string {
	return fmt.Sprintf("10.%d.%d.%d", a+i/65536, i/256%256, i%256)
}

// Translate translates every proxy of st as the Bulwark server does and
// calls f with proxy i's parts and prepared configuration, whose versions
// are what proxy i ends up ACKing.
func (s Spec) Translate(st *model.State, f func(i int, w *model.Workload, parts []*xds.Part, cfg fanout.Config) error) error {
	store := model.NewStore()
	if _, err := store.ReplaceState(st); err != nil {
		return err
	}
	return s.TranslateSnapshot(store.Snapshot(), f)
}

// TranslateSnapshot is Translate from a model snapshot.
func (s Spec) TranslateSnapshot(snap *model.Snapshot, f func(i int, w *model.Workload, parts []*xds.Part, cfg fanout.Config) error) error {
	now := time.Now()
	tr := xds.NewTranslator(snap, xds.Options{Now: now, Authz: authz.NewIndex(snap, now)})
	prep := fanout.NewPreparer()
	for i := 0; i < s.Proxies; i++ {
		w := snap.Workload(Namespace, ProxyName(i))
		parts, err := tr.Parts(w)
		if err != nil {
			return err
		}
		cfg, err := prep.Prepare(parts)
		if err != nil {
			return err
		}
		if err := f(i, w, parts, cfg); err != nil {
			return err
		}
	}
	return nil
}
