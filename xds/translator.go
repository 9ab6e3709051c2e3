package xds

import (
	"sort"
	"strings"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/model"
)

// Translator translates the proxies of one snapshot, building each piece
// that several proxies share once: the cluster, load assignment and route
// of a service port; the listener of a service address; the inbound side
// of proxies that only differ by name and pod address; the services an
// identity may call. The protos it returns are shared between the
// Resources of different proxies and must not be modified. Safe for
// concurrent use.
type Translator struct {
	snap *model.Snapshot
	opts Options
	idx  *authz.Index
	td   string

	mu       sync.Mutex
	outbound map[string]*outboundPieces // by cluster name
	inbound  map[string]*inboundPieces  // by inbound class
	scope    map[string][]upstream      // transparent upstreams by caller identity
	ids      map[string][]string        // service identities by service key
}

type outboundPieces struct {
	cluster     *clusterv3.Cluster
	cla         *endpointv3.ClusterLoadAssignment
	route       *routev3.RouteConfiguration
	transparent *listenerv3.Listener // bound to the service address
}

type inboundPieces struct {
	listeners []*listenerv3.Listener
	clusters  []*clusterv3.Cluster
	routes    []*routev3.RouteConfiguration
}

// NewTranslator returns a translator over snap.
func NewTranslator(snap *model.Snapshot, opts Options) *Translator {
	return &Translator{
		snap: snap, opts: opts, idx: opts.index(snap), td: snap.Mesh().TrustDomain,
		outbound: map[string]*outboundPieces{}, inbound: map[string]*inboundPieces{},
		scope: map[string][]upstream{}, ids: map[string][]string{},
	}
}

// Translate returns the configuration of w's sidecar.
func (t *Translator) Translate(w *model.Workload) (*Resources, error) {
	if w == nil {
		return nil, errNoWorkload
	}
	in := t.inboundOf(w)
	r := &Resources{
		Listeners: append([]*listenerv3.Listener{}, in.listeners...),
		Clusters:  append([]*clusterv3.Cluster{}, in.clusters...),
		Routes:    append([]*routev3.RouteConfiguration{}, in.routes...),
	}
	for _, up := range t.upstreams(w) {
		o := t.outboundOf(up)
		if w.Transparent() {
			r.Listeners = append(r.Listeners, o.transparent)
		} else {
			r.Listeners = append(r.Listeners, outboundListener(w, up))
		}
		r.Clusters = append(r.Clusters, o.cluster)
		r.Endpoints = append(r.Endpoints, o.cla)
		if o.route != nil {
			r.Routes = append(r.Routes, o.route)
		}
	}
	r.sort()
	return r, nil
}

// Endpoints returns only the load assignments of w's sidecar.
func (t *Translator) Endpoints(w *model.Workload) []*endpointv3.ClusterLoadAssignment {
	var out []*endpointv3.ClusterLoadAssignment
	for _, up := range t.upstreams(w) {
		out = append(out, t.outboundOf(up).cla)
	}
	sortByName(out)
	return out
}

// UpstreamIdentities returns, for each outbound cluster of w, the
// identities its client side accepts.
func (t *Translator) UpstreamIdentities(w *model.Workload) map[string][]string {
	out := map[string][]string{}
	for _, up := range t.upstreams(w) {
		out[OutboundName(up.svc, up.port.Port)] = t.serviceIdentities(up.svc)
	}
	return out
}

func (t *Translator) serviceIdentities(svc *model.Service) []string {
	t.mu.Lock()
	ids, ok := t.ids[svc.Key()]
	t.mu.Unlock()
	if ok {
		return ids
	}
	ids = ServiceIdentities(t.snap, svc)
	t.mu.Lock()
	t.ids[svc.Key()] = ids
	t.mu.Unlock()
	return ids
}

// upstreams lists the service ports w calls: its explicit upstreams, or,
// under transparent capture, every port of every service with an address
// that w's identity may call at all (unless the mesh turns scoping off).
// What an identity may call is the same for every workload that has it.
func (t *Translator) upstreams(w *model.Workload) []upstream {
	if !w.Transparent() {
		return upstreams(t.snap, w, t.idx)
	}
	me := w.Identity(t.td).String()
	t.mu.Lock()
	ups, ok := t.scope[me]
	t.mu.Unlock()
	if ok {
		return ups
	}
	ups = upstreams(t.snap, w, t.idx)
	t.mu.Lock()
	t.scope[me] = ups
	t.mu.Unlock()
	return ups
}

// outboundOf returns the shared pieces of a service port.
func (t *Translator) outboundOf(up upstream) *outboundPieces {
	name := OutboundName(up.svc, up.port.Port)
	t.mu.Lock()
	o, ok := t.outbound[name]
	t.mu.Unlock()
	if ok {
		return o
	}
	o = &outboundPieces{
		cluster: edsCluster(name, t.serviceIdentities(up.svc)),
		cla:     loadAssignment(t.snap, up.svc, up.port, t.opts.Now),
	}
	if up.port.Protocol == model.ProtocolHTTP {
		o.route = routeConfig(name, name, connectRetries())
	}
	if up.svc.Address != "" {
		o.transparent = outboundListener(&model.Workload{Capture: model.CaptureTransparent}, up)
	}
	t.mu.Lock()
	if prev, ok := t.outbound[name]; ok {
		o = prev // another goroutine built it first; keep one copy
	} else {
		t.outbound[name] = o
	}
	t.mu.Unlock()
	return o
}

// inboundClass identifies the workloads whose inbound configuration is
// the same: what Translate reads of a workload besides its name. Under
// transparent capture the pod address is not part of it.
func inboundClass(w *model.Workload) string {
	var b strings.Builder
	b.WriteString(w.Namespace + "|" + w.ServiceAccount + "|" + string(w.Capture) + "|" + w.LocalAddress + "|")
	if !w.Transparent() {
		b.WriteString(w.Address)
	}
	b.WriteString("|" + strings.Join(w.Services, ","))
	keys := make([]string, 0, len(w.Labels))
	for k := range w.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b.WriteString("|" + k + "=" + w.Labels[k])
	}
	return b.String()
}

// inboundOf returns the inbound side of w's sidecar, shared by its class.
func (t *Translator) inboundOf(w *model.Workload) *inboundPieces {
	class := inboundClass(w)
	t.mu.Lock()
	in, ok := t.inbound[class]
	t.mu.Unlock()
	if ok {
		return in
	}
	in = &inboundPieces{}
	var virtualChains []*listenerv3.FilterChain
	inspect := false
	for _, ip := range inboundPorts(t.snap, w) {
		name := InboundName(ip.port.TargetPort)
		table := t.idx.Table(w, ip.port.TargetPort, ip.port.Protocol)
		l := inboundListener(w, ip, table, t.td)
		if w.Transparent() {
			// One listener takes all redirected traffic; each port is a
			// filter chain matched by the original destination port.
			for _, fc := range l.FilterChains {
				if fc.FilterChainMatch == nil {
					fc.FilterChainMatch = &listenerv3.FilterChainMatch{}
				}
				fc.FilterChainMatch.DestinationPort = wrapperspb.UInt32(ip.port.TargetPort)
				fc.Name = name + "|" + fc.Name
				virtualChains = append(virtualChains, fc)
			}
			inspect = inspect || len(l.ListenerFilters) > 0
		} else {
			in.listeners = append(in.listeners, l)
		}
		in.clusters = append(in.clusters, staticCluster(name, w.LocalAddress, ip.port.TargetPort))
		if ip.port.Protocol == model.ProtocolHTTP {
			in.routes = append(in.routes, routeConfig(name, name, nil))
		}
	}
	if w.Transparent() {
		in.listeners = append(in.listeners, virtualInbound(virtualChains, inspect), virtualOutbound())
		in.clusters = append(in.clusters, passthroughCluster())
	}
	t.mu.Lock()
	if prev, ok := t.inbound[class]; ok {
		in = prev
	} else {
		t.inbound[class] = in
	}
	t.mu.Unlock()
	return in
}
