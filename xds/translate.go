package xds

import (
	"cmp"
	"errors"
	"slices"
	"sort"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// Resources is the configuration of one proxy, each list sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

var errNoWorkload = errors.New("xds: no workload")

// Options are the inputs of a translation that the model does not hold.
type Options struct {
	// Now decides which mTLS exceptions have expired.
	Now time.Time
	// Authz, when set, is shared by the translations of one pass so each
	// workload port's authorization is compiled once. It must have been
	// built from the same snapshot and Now.
	Authz *authz.Index
	// Secrets are the SDS secret names a proxy's SDS server provides, for
	// Translator.Parts to check TLS contexts against. Defaults to
	// contract.Secrets().
	Secrets []string
	// RevocationEpoch is the mesh's revocation epoch, stamped on every
	// inbound filter chain that requires a client certificate, every
	// cluster that originates mutual TLS and every outbound chain that
	// proxies TCP to one, so that changing it makes Envoy close each
	// mutual TLS connection made before (see revocation.go). 0 stamps
	// nothing.
	RevocationEpoch uint64
}

func (o Options) secrets() []string {
	if o.Secrets == nil {
		return contract.Secrets()
	}
	return o.Secrets
}

func (o Options) index(snap *model.Snapshot) *authz.Index {
	if o.Authz != nil {
		return o.Authz
	}
	return authz.NewIndex(snap, o.Now)
}

// connectTimeout bounds how long a sidecar waits for a TCP connection to
// an app or another sidecar.
const connectTimeout = 5 * time.Second

// Translate returns the configuration of the sidecar of workload w as the
// snapshot describes it. It reads the snapshot only. A service or
// upstream the snapshot no longer holds is left out rather than failing
// the whole proxy. To translate many proxies of one snapshot, use a
// Translator: it builds what proxies share once.
func Translate(snap *model.Snapshot, w *model.Workload, opts Options) (*Resources, error) {
	return NewTranslator(snap, opts).Translate(w)
}

// ServiceIdentities returns the SPIFFE IDs of the workloads behind the
// ready endpoints of svc, sorted: the identities a caller accepts from
// the other end of a connection to svc.
func ServiceIdentities(snap *model.Snapshot, svc *model.Service) []string {
	td := snap.Mesh().TrustDomain
	seen := map[string]bool{}
	var out []string
	for _, ep := range snap.Endpoints(svc.Namespace, svc.Name) {
		if !ep.Ready || ep.Workload == "" {
			continue
		}
		w := snap.Workload(ep.Namespace, ep.Workload)
		if w == nil {
			continue
		}
		id := w.Identity(td).String()
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// inboundPorts lists w's inbound ports (see model.Workload.InboundPorts)
// ordered by port.
func inboundPorts(snap *model.Snapshot, w *model.Workload) []model.InboundPort {
	out := snap.InboundPorts(w)
	slices.SortFunc(out, func(a, b model.InboundPort) int { return cmp.Compare(a.Port, b.Port) })
	return out
}

// upstream is a service port a workload calls, resolved.
type upstream struct {
	svc       *model.Service
	port      *model.ServicePort
	localPort uint32
}

// upstreams lists the service ports w calls: its explicit upstreams, or,
// under transparent capture, every port of every service with an address
// that w's identity may call at all (unless the mesh turns scoping off).
func upstreams(snap *model.Snapshot, w *model.Workload, idx *authz.Index) []upstream {
	ups, _ := upstreamsKeyed(snap, w, idx)
	return ups
}

// upstreamsKeyed is upstreams with a key that is equal for two
// transparent workloads of the snapshot exactly when their upstreams
// are: one bit per service port, in the snapshot's order.
func upstreamsKeyed(snap *model.Snapshot, w *model.Workload, idx *authz.Index) ([]upstream, string) {
	var out []upstream
	if w.Transparent() {
		mesh := snap.Mesh()
		me := w.Identity(mesh.TrustDomain).String()
		var bits []byte
		n := 0
		for _, svc := range snap.Services() {
			for i := range svc.Ports {
				if n%8 == 0 {
					bits = append(bits, 0)
				}
				ok := svc.Address != "" && (!mesh.Authorization.Scoped() || idx.MayCall(me, svc, &svc.Ports[i]))
				if ok {
					out = append(out, upstream{svc: svc, port: &svc.Ports[i]})
					bits[n/8] |= 1 << (n % 8)
				}
				n++
			}
		}
		return out, string(bits)
	}
	for _, u := range w.Upstreams {
		svc := snap.Service(u.Namespace, u.Service)
		if svc == nil {
			continue
		}
		p := svc.Port(u.Port)
		if p == nil {
			continue
		}
		out = append(out, upstream{svc: svc, port: p, localPort: u.LocalPort})
	}
	return out, "workload " + w.Key()
}

// Sort sorts each list by name.
func (r *Resources) Sort() {
	sortByName(r.Listeners)
	sortByName(r.Routes)
	sortByName(r.Clusters)
	sortByName(r.Endpoints)
}

type named interface{ GetName() string }

func sortByName[T any](s []T) {
	if len(s) < 2 {
		return
	}
	names := make([]string, len(s))
	for i := range s {
		names[i] = name(s[i])
	}
	sort.Stable(byName[T]{s, names})
}

type byName[T any] struct {
	items []T
	names []string
}

func (b byName[T]) Len() int           { return len(b.items) }
func (b byName[T]) Less(i, j int) bool { return b.names[i] < b.names[j] }
func (b byName[T]) Swap(i, j int) {
	b.items[i], b.items[j] = b.items[j], b.items[i]
	b.names[i], b.names[j] = b.names[j], b.names[i]
}

// ResourceName is the xDS name of a listener, route configuration,
// cluster or load assignment.
func ResourceName(v any) string { return name(v) }

func name(v any) string {
	switch m := v.(type) {
	case named:
		return m.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return m.GetClusterName()
	}
	return ""
}

func socketAddress(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// adsSource says "ask the same ADS stream".
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func duration(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
