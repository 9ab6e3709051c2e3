package xds

import (
	"errors"
	"fmt"
	"maps"
	"slices"
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
	scope    map[string]string          // transparent upstream keys by caller identity
	ups      map[string][]upstream      // upstreams by key
	ids      map[string][]string        // service identities by service key
	inParts  map[string]*Part           // by inbound class
	outParts map[string]*Part           // by upstream list (see outKey)
}

// Part is a group of resources that several proxies share: the inbound
// side of a class of workloads, or the outbound side of a list of
// upstreams. A proxy's configuration is the union of its parts; no two
// parts of a proxy define the same name. Parts are immutable.
type Part struct {
	Resources // each list sorted by name
	// err is the result of Check on this part alone.
	err error
	// names holds every name the part defines, by kind, to tell a
	// collision between parts.
	names map[string]bool
}

func newPart(r Resources, secrets []string) *Part {
	r.Sort()
	p := &Part{Resources: r, err: Check(&r, secrets), names: map[string]bool{}}
	for _, l := range r.Listeners {
		p.names["l/"+l.GetName()] = true
	}
	for _, c := range r.Clusters {
		p.names["c/"+c.GetName()] = true
	}
	for _, rc := range r.Routes {
		p.names["r/"+rc.GetName()] = true
	}
	for _, e := range r.Endpoints {
		p.names["e/"+e.GetClusterName()] = true
	}
	return p
}

type outboundPieces struct {
	svc         *model.Service
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
		scope: map[string]string{}, ups: map[string][]upstream{}, ids: map[string][]string{},
		inParts: map[string]*Part{}, outParts: map[string]*Part{},
	}
}

// Next returns a translator for snap, a later snapshot of the same store
// that differs from t's in the tables in changed only, with opts. When
// only endpoints changed, it keeps what t built that does
// not depend on the endpoints of the services whose endpoints changed:
// every inbound side, and the outbound pieces, upstream lists and
// outbound parts of every other service. Otherwise (a table other than
// endpoints changed, or the revocation epoch did) it starts afresh. t
// must not be used after.
func (t *Translator) Next(snap *model.Snapshot, opts Options, changed map[string]bool) *Translator {
	if opts.RevocationEpoch != t.opts.RevocationEpoch {
		return NewTranslator(snap, opts)
	}
	for table := range changed {
		if table != model.TableEndpoints {
			return NewTranslator(snap, opts)
		}
	}
	dirty := map[*model.Service]bool{}
	for _, svc := range snap.Services() {
		if !slices.Equal(t.snap.Endpoints(svc.Namespace, svc.Name), snap.Endpoints(svc.Namespace, svc.Name)) {
			dirty[svc] = true
		}
	}
	if opts.Authz == nil {
		opts.Authz = t.idx.Next(snap, opts.Now, func(svc *model.Service) bool { return dirty[svc] })
	}
	n := NewTranslator(snap, opts)
	t.mu.Lock()
	defer t.mu.Unlock()
	n.inbound, n.inParts = maps.Clone(t.inbound), maps.Clone(t.inParts)
	for name, o := range t.outbound {
		if !dirty[o.svc] {
			n.outbound[name] = o
		}
	}
	services := snap.Services()
	for _, svc := range services {
		if ids, ok := t.ids[svc.Key()]; ok && !dirty[svc] {
			n.ids[svc.Key()] = ids
		}
	}
	// An identity's upstreams change only where a dirty service is.
	mesh := snap.Mesh()
	for me, key := range t.scope {
		bits := []byte(key)
		i := 0
		for _, svc := range services {
			for j := range svc.Ports {
				if dirty[svc] {
					ok := svc.Address != "" && (!mesh.Authorization.Scoped() || n.idx.MayCall(me, svc, &svc.Ports[j]))
					if ok {
						bits[i/8] |= 1 << (i % 8)
					} else {
						bits[i/8] &^= 1 << (i % 8)
					}
				}
				i++
			}
		}
		nk := string(bits)
		n.scope[me] = nk
		if ups, ok := t.ups[nk]; ok {
			n.ups[nk] = ups
		} else if _, ok := n.ups[nk]; !ok {
			n.ups[nk] = upstreamsFromKey(services, nk)
		}
	}
	for key, p := range t.outParts {
		ups, ok := n.ups[key]
		if !ok || strings.HasPrefix(key, "workload ") {
			continue
		}
		clean := true
		for _, up := range ups {
			if dirty[up.svc] {
				clean = false
				break
			}
		}
		if clean {
			n.outParts[key] = p
		}
	}
	return n
}

// upstreamsFromKey lists the service ports whose bits key sets.
func upstreamsFromKey(services []*model.Service, key string) []upstream {
	var out []upstream
	i := 0
	for _, svc := range services {
		for j := range svc.Ports {
			if key[i/8]&(1<<(i%8)) != 0 {
				out = append(out, upstream{svc: svc, port: &svc.Ports[j]})
			}
			i++
		}
	}
	return out
}

// Translate returns the configuration of w's sidecar, unchecked: the
// union of its parts, sorted.
func (t *Translator) Translate(w *model.Workload) (*Resources, error) {
	if w == nil {
		return nil, errNoWorkload
	}
	return Union(t.inboundPart(w), t.outboundPart(w)), nil
}

// Union returns the resources of parts together, sorted by name.
func Union(parts ...*Part) *Resources {
	r := &Resources{}
	for _, p := range parts {
		r.Listeners = append(r.Listeners, p.Listeners...)
		r.Clusters = append(r.Clusters, p.Clusters...)
		r.Routes = append(r.Routes, p.Routes...)
		r.Endpoints = append(r.Endpoints, p.Endpoints...)
	}
	r.Sort()
	return r
}

// Parts returns the configuration of w's sidecar as the parts it shares
// with other sidecars, each checked (see Check, with the Secrets of the
// translator's options) and no two defining the same name. Otherwise it
// returns an error wrapping ErrInconsistent and the configuration must
// not be published.
func (t *Translator) Parts(w *model.Workload) ([]*Part, error) {
	if w == nil {
		return nil, errNoWorkload
	}
	in, out := t.inboundPart(w), t.outboundPart(w)
	if err := errors.Join(in.err, out.err); err != nil {
		return nil, err
	}
	small, large := in, out
	if len(small.names) > len(large.names) {
		small, large = large, small
	}
	for n := range small.names {
		if large.names[n] {
			return nil, fmt.Errorf("%w: %q is defined by the inbound and the outbound side", ErrInconsistent, n[2:])
		}
	}
	return []*Part{in, out}, nil
}

func (t *Translator) inboundPart(w *model.Workload) *Part {
	class := inboundClass(w)
	t.mu.Lock()
	p, ok := t.inParts[class]
	t.mu.Unlock()
	if ok {
		return p
	}
	in := t.inboundOf(w)
	p = newPart(Resources{Listeners: in.listeners, Clusters: in.clusters, Routes: in.routes}, t.opts.secrets())
	t.mu.Lock()
	if prev, ok := t.inParts[class]; ok {
		p = prev
	} else {
		t.inParts[class] = p
	}
	t.mu.Unlock()
	return p
}

// outboundPart returns the outbound side of w's sidecar. Under
// transparent capture, every workload that calls the same list of
// upstreams shares it; an explicit sidecar's listeners are its own.
func (t *Translator) outboundPart(w *model.Workload) *Part {
	sc := t.upstreams(w)
	ups := sc.ups
	t.mu.Lock()
	p, ok := t.outParts[sc.key]
	t.mu.Unlock()
	if ok {
		return p
	}
	var r Resources
	for _, up := range ups {
		o := t.outboundOf(up)
		if w.Transparent() {
			r.Listeners = append(r.Listeners, o.transparent)
		} else {
			r.Listeners = append(r.Listeners, outboundListener(w, up, t.opts.RevocationEpoch))
		}
		r.Clusters = append(r.Clusters, o.cluster)
		r.Endpoints = append(r.Endpoints, o.cla)
		if o.route != nil {
			r.Routes = append(r.Routes, o.route)
		}
	}
	p = newPart(r, t.opts.secrets())
	t.mu.Lock()
	if prev, ok := t.outParts[sc.key]; ok {
		p = prev
	} else {
		t.outParts[sc.key] = p
	}
	t.mu.Unlock()
	return p
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
func (t *Translator) upstreams(w *model.Workload) scope {
	if !w.Transparent() {
		ups, key := upstreamsKeyed(t.snap, w, t.idx)
		return scope{ups, key}
	}
	me := w.Identity(t.td).String()
	t.mu.Lock()
	key, ok := t.scope[me]
	ups := t.ups[key]
	t.mu.Unlock()
	if ok {
		return scope{ups, key}
	}
	ups, key = upstreamsKeyed(t.snap, w, t.idx)
	t.mu.Lock()
	t.scope[me] = key
	if prev, ok := t.ups[key]; ok {
		ups = prev // identities that may call the same services share one list
	} else {
		t.ups[key] = ups
	}
	t.mu.Unlock()
	return scope{ups, key}
}

// scope is the upstreams of a workload and a key equal for workloads
// whose upstreams are.
type scope struct {
	ups []upstream
	key string
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
		svc:     up.svc,
		cluster: edsCluster(name, t.serviceIdentities(up.svc), t.opts.RevocationEpoch),
		cla:     loadAssignment(t.snap, up.svc, up.port, t.opts.Now),
	}
	if up.port.Protocol == model.ProtocolHTTP {
		o.route = routeConfig(name, name, connectRetries())
	}
	if up.svc.Address != "" {
		o.transparent = outboundListener(&model.Workload{Capture: model.CaptureTransparent}, up, t.opts.RevocationEpoch)
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
		name := InboundName(ip.Port)
		table := t.idx.Table(w, ip.Port, ip.Protocol)
		l := inboundListener(w, ip, table, t.td, t.opts.RevocationEpoch)
		if w.Transparent() {
			// One listener takes all redirected traffic; each port is a
			// filter chain matched by the original destination port.
			for _, fc := range l.FilterChains {
				if fc.FilterChainMatch == nil {
					fc.FilterChainMatch = &listenerv3.FilterChainMatch{}
				}
				fc.FilterChainMatch.DestinationPort = wrapperspb.UInt32(ip.Port)
				fc.Name = name + "|" + fc.Name
				virtualChains = append(virtualChains, fc)
			}
			inspect = inspect || len(l.ListenerFilters) > 0
		} else {
			in.listeners = append(in.listeners, l)
		}
		in.clusters = append(in.clusters, staticCluster(name, w.LocalAddress, ip.Port))
		if ip.Protocol == model.ProtocolHTTP {
			in.routes = append(in.routes, routeConfig(name, name, nil))
		}
	}
	if w.Transparent() {
		in.listeners = append(in.listeners, virtualInbound(virtualChains, inspect), virtualOutbound())
		in.clusters = append(in.clusters, passthroughCluster())
		if len(virtualChains) == 0 {
			in.clusters = append(in.clusters, blackHoleCluster())
		}
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
