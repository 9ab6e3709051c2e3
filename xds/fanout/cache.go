package fanout

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"google.golang.org/grpc/mem"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Cache holds each node's Config and answers the ADS server's watches
// from it. It implements go-control-plane's cache.Cache for the
// state-of-the-world protocol; it serves neither incremental xDS nor
// REST fetches.
//
// A watch is answered when the node's set of its kind differs from what
// the stream was last sent: for listeners and clusters, when the
// request's version is not the set's (the whole set is sent); for
// endpoints and routes, with the requested resources whose version the
// stream does not have, once every requested name is in the set (so a
// proxy never waits on half of a change, as ADS requires). A stream
// sent an EDS cluster that changed is sent its load assignment again,
// changed or not: Envoy waits for it before it uses the new cluster.
//
// What a stream has been sent is kept here, not in the server's
// per-stream "returned resources" map (the cache always hands it nil):
// a set and the names it covered, recorded when the server actually
// sends a response, so a response the server drops is not counted.
// The server names the stream of each request with Bind, and says when
// a stream ends with ForgetStream. (A request that was not bound is
// taken to come from the stream whose response channel it names.)
type Cache struct {
	mu    sync.RWMutex
	nodes map[string]*node

	bindMu sync.Mutex
	binds  map[*cachev3.Request]binding
	last   map[int64]*cachev3.Request // the bound request of each stream
	where  map[int64]string           // the node of each stream
}

type node struct {
	mu      sync.Mutex
	config  Config
	watches [numKinds]map[*watch]struct{}
	streams map[any]*sent // by stream: an ID, or a response channel
	// removed is set, under mu, when the node leaves Cache.nodes: whoever
	// holds it then must look the node up again.
	removed bool
}

// sent is what one stream has been sent, by kind.
type sent [numKinds]struct {
	set *Set
	// names are those of set the stream was sent; nil means all.
	names map[string]struct{}
}

// version returns the version of name the stream has, or "".
func (s *sent) version(k Kind, name string) string {
	if s == nil || s[k].set == nil {
		return ""
	}
	if s[k].names != nil {
		if _, ok := s[k].names[name]; !ok {
			return ""
		}
	}
	if p := s[k].set.lookup(name); p != nil {
		return p.Version
	}
	return ""
}

// narrow forgets the resources of kind k that the stream no longer
// subscribes to: a proxy that unsubscribes from a resource drops it, and
// when it subscribes again it must be sent it again, changed or not.
// exact is a set whose names are exactly the subscription, or nil.
func (s *sent) narrow(k Kind, subscribed map[string]struct{}, exact *Set) {
	e := &s[k]
	if e.set == nil || (e.names == nil && e.set == exact) {
		return
	}
	if e.names != nil { // the record's own copy
		for name := range e.names {
			if _, ok := subscribed[name]; !ok {
				delete(e.names, name)
			}
		}
		return
	}
	all := e.set.all()
	if !slices.ContainsFunc(all, func(p *Piece) bool { _, ok := subscribed[p.Name]; return !ok }) {
		return
	}
	e.names = map[string]struct{}{}
	for _, p := range all {
		if _, ok := subscribed[p.Name]; ok {
			e.names[p.Name] = struct{}{}
		}
	}
}

// forget drops names from what the stream has of kind k, so they are
// sent again; it reports whether the stream had any of them.
func (s *sent) forget(k Kind, names []string) bool {
	e := &s[k]
	if e.set == nil {
		return false
	}
	if e.names == nil { // all of the set: list them, less names
		e.names = make(map[string]struct{}, e.set.n)
		for _, p := range e.set.all() {
			e.names[p.Name] = struct{}{}
		}
	}
	had := false
	for _, name := range names {
		if _, ok := e.names[name]; ok {
			delete(e.names, name)
			had = true
		}
	}
	return had
}

type watch struct {
	kind   Kind
	req    *cachev3.Request
	sub    cachev3.Subscription
	out    chan cachev3.Response
	node   *node
	stream any
	// exact is a set of the node whose names are exactly those the
	// watch subscribes to, when Bind found one; else nil.
	exact *Set
}

// binding is what Bind learned of a request.
type binding struct {
	stream int64
	// named is the node's set that holds every name the request names,
	// when there is one: with as many distinct names as the set has,
	// the subscription is exactly the set (CreateWatch checks the count).
	named *Set
}

var _ cachev3.Cache = (*Cache)(nil)

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{nodes: map[string]*node{}, binds: map[*cachev3.Request]binding{},
		last: map[int64]*cachev3.Request{}, where: map[int64]string{}}
}

// Bind says that req, which the server is about to pass to
// CreateWatch, comes from stream. It also replaces each resource name
// in req that the node's set of its kind holds with the set's own copy
// of it: the ADS server keeps every stream's last subscription, and
// with thousands of streams subscribed to the same thousands of load
// assignments, sharing the strings saves most of that memory.
func (c *Cache) Bind(req *cachev3.Request, stream int64) {
	named := c.intern(req.GetNode().GetId(), req.GetTypeUrl(), req.ResourceNames)
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	if prev := c.last[stream]; prev != nil {
		delete(c.binds, prev) // never watched (a stale nonce)
	}
	c.binds[req], c.last[stream] = binding{stream: stream, named: named}, req
	c.where[stream] = req.GetNode().GetId()
}

func (c *Cache) unbind(req *cachev3.Request) (binding, bool) {
	c.bindMu.Lock()
	defer c.bindMu.Unlock()
	b, ok := c.binds[req]
	if ok {
		delete(c.binds, req)
		delete(c.last, b.stream)
	}
	return b, ok
}

// ForgetStream drops what the cache knows of a stream that ended.
func (c *Cache) ForgetStream(stream int64) {
	c.bindMu.Lock()
	if prev := c.last[stream]; prev != nil {
		delete(c.binds, prev)
	}
	delete(c.last, stream)
	node, ok := c.where[stream]
	delete(c.where, stream)
	c.bindMu.Unlock()
	if !ok {
		return
	}
	c.mu.RLock()
	n := c.nodes[node]
	c.mu.RUnlock()
	if n != nil {
		n.mu.Lock()
		delete(n.streams, stream)
		n.mu.Unlock()
	}
}

// lockNode returns the node, created if need be, locked.
func (c *Cache) lockNode(id string) *node {
	for {
		n := c.node(id)
		n.mu.Lock()
		if !n.removed {
			return n
		}
		n.mu.Unlock()
	}
}

func (c *Cache) node(id string) *node {
	c.mu.RLock()
	n := c.nodes[id]
	c.mu.RUnlock()
	if n != nil {
		return n
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n = c.nodes[id]; n == nil {
		n = &node{streams: map[any]*sent{}}
		for k := range n.watches {
			n.watches[k] = map[*watch]struct{}{}
		}
		c.nodes[id] = n
	}
	return n
}

// SetNode makes cfg the node's configuration and answers the node's open
// watches of every kind whose version changed, which it reports. A nil
// set keeps the node's current one.
func (c *Cache) SetNode(id string, cfg Config) (changed [numKinds]bool) {
	n := c.lockNode(id)
	defer n.mu.Unlock()
	for _, k := range Kinds {
		s := cfg[k]
		if s == nil || (n.config[k] != nil && n.config[k].Version == s.Version) {
			continue
		}
		n.config[k] = s
		changed[k] = true
	}
	for _, k := range Kinds {
		if !changed[k] {
			continue
		}
		for w := range n.watches[k] {
			if r := respond(w, n.config[k]); r != nil {
				w.out <- r
				delete(n.watches[k], w)
			}
		}
	}
	return changed
}

// Node returns the node's configuration; false if it has none.
func (c *Cache) Node(id string) (Config, bool) {
	c.mu.RLock()
	n := c.nodes[id]
	c.mu.RUnlock()
	if n == nil {
		return Config{}, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.config, n.config != Config{}
}

// intern replaces each name that the node's set of typeURL holds with
// the set's own copy of it, and returns that set if it holds every
// name.
func (c *Cache) intern(id, typeURL string, names []string) *Set {
	k, ok := kindOf(typeURL)
	if !ok || len(names) == 0 {
		return nil
	}
	c.mu.RLock()
	n := c.nodes[id]
	c.mu.RUnlock()
	if n == nil {
		return nil
	}
	n.mu.Lock()
	s := n.config[k]
	n.mu.Unlock()
	if s == nil {
		return nil
	}
	found := 0
	for i, name := range names {
		if p := s.lookup(name); p != nil {
			names[i] = p.Name
			found++
		}
	}
	if found < len(names) {
		return nil
	}
	return s
}

// ClearNode drops the node's configuration, and the node itself unless
// a stream (a proxy that reconnected meanwhile) is watching it.
func (c *Cache) ClearNode(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id]
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.config = Config{}
	for _, ws := range n.watches {
		if len(ws) > 0 {
			return
		}
	}
	n.removed = true
	delete(c.nodes, id)
}

// CreateWatch answers req at once if the node's configuration calls for
// it, or else when it changes. The server sends at most one request per
// kind and stream at a time, and out has room for a response per kind,
// so sending on it never blocks.
func (c *Cache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	k, ok := kindOf(req.GetTypeUrl())
	if !ok {
		// Not a kind a sidecar is sent: the watch stays open, unanswered.
		return func() {}, nil
	}
	var stream any = out
	var exact *Set
	if b, ok := c.unbind(req); ok {
		stream = b.stream
		if b.named != nil && !sub.IsWildcard() && len(sub.SubscribedResources()) == b.named.n {
			exact = b.named
		}
	}
	n := c.lockNode(req.GetNode().GetId())
	defer n.mu.Unlock()
	if had := n.streams[stream]; had != nil && !sub.IsWildcard() {
		had.narrow(k, sub.SubscribedResources(), exact)
	}
	// The watch keeps a copy of the request without its resource names:
	// thousands of streams each holding the last list of a thousand
	// names they sent would cost more than all the configuration.
	light := &cachev3.Request{VersionInfo: req.GetVersionInfo(), Node: req.GetNode(), TypeUrl: req.GetTypeUrl(), ResponseNonce: req.GetResponseNonce()}
	w := &watch{kind: k, req: light, sub: sub, out: out, node: n, stream: stream, exact: exact}
	if s := n.config[k]; s != nil {
		if r := respond(w, s); r != nil {
			out <- r
			return func() {}, nil
		}
	}
	n.watches[k][w] = struct{}{}
	return func() {
		n.mu.Lock()
		delete(n.watches[k], w)
		n.mu.Unlock()
	}, nil
}

var errUnsupported = errors.New("fanout: only state-of-the-world ADS streams are served")

// CreateDeltaWatch refuses: incremental xDS is not served.
func (c *Cache) CreateDeltaWatch(*cachev3.DeltaRequest, cachev3.Subscription, chan cachev3.DeltaResponse) (func(), error) {
	return nil, errUnsupported
}

// Fetch refuses: REST xDS is not served.
func (c *Cache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errUnsupported
}

// respond returns the response w calls for given s, or nil. The node's
// lock is held.
func respond(w *watch, s *Set) *response {
	had := w.node.streams[w.stream]
	if w.kind.fullState() && w.sub.IsWildcard() {
		if w.req.GetVersionInfo() == s.Version {
			return nil
		}
		return &response{w: w, set: s, whole: true}
	}
	if !w.kind.fullState() && had != nil && had[w.kind].names == nil && had[w.kind].set != nil {
		// The stream has all of a set. Two common cases need no look at
		// each resource: an ACK of the set (the stream has every resource
		// of it, so whatever it asks for, nothing is new), and a new set
		// of the same names for a stream that subscribes to exactly
		// those (what changed is the same for every stream, see diff).
		switch prev := had[w.kind].set; {
		case prev == s:
			return nil
		case w.exact == prev:
			if d := s.diff(prev); d.sameNames {
				if len(d.fresh) == 0 && !d.allFresh {
					return nil
				}
				r := &response{w: w, set: s, whole: d.allFresh || len(d.fresh) == s.n}
				if !r.whole {
					r.pieces = d.fresh
				}
				return r
			}
		}
	}
	var names map[string]struct{}
	if !w.sub.IsWildcard() {
		names = w.sub.SubscribedResources()
	}
	subscribed := func(name string) bool {
		if names == nil {
			return true
		}
		_, ok := names[name]
		return ok
	}
	// In the set's order, which is the same for every node sharing it.
	var pieces []*Piece
	found, fresh := 0, false
	for _, g := range s.groups {
		for _, p := range g.Pieces {
			if !subscribed(p.Name) {
				continue
			}
			found++
			if had.version(w.kind, p.Name) != p.Version {
				fresh = true
				if !w.kind.fullState() {
					pieces = append(pieces, p)
				}
			}
			if w.kind.fullState() {
				pieces = append(pieces, p) // all of them, if any is new
			}
		}
	}
	if w.kind.fullState() {
		// A proxy that names the listeners or clusters it wants (Envoy's
		// sidecars do not) gets those of them that exist.
		if !fresh && w.req.GetVersionInfo() == s.Version {
			return nil
		}
	} else {
		if names != nil && found < len(names) {
			return nil // some are not there yet: wait for the rest of the change
		}
		if !fresh {
			return nil
		}
	}
	covered := names
	if names == nil || found == s.n {
		covered = nil // all of the set
	}
	r := &response{w: w, set: s, whole: len(pieces) == s.n}
	if !r.whole {
		r.pieces = pieces
	}
	if covered != nil {
		r.covered = maps.Clone(covered)
	}
	return r
}

// response is one answer to one watch. It implements cachev3.Response.
type response struct {
	w   *watch
	set *Set
	// whole: every resource of set, in its order; else pieces.
	whole   bool
	pieces  []*Piece
	covered map[string]struct{} // the names of set the stream has after it; nil: all
}

// commit records that the stream was sent the response.
func (r *response) commit() {
	n := r.w.node
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.streams[r.w.stream]
	if st == nil {
		st = &sent{}
		n.streams[r.w.stream] = st
	}
	if r.w.kind == Clusters {
		r.reassign(st)
	}
	st[r.w.kind].set, st[r.w.kind].names = r.set, r.covered
}

// reassign makes the stream be sent again the load assignment of each
// EDS cluster that the response, about to be sent, changes. Envoy builds
// a changed cluster anew and keeps it warming, and the old one serving,
// until that cluster's load assignment arrives, changed or not
// (go-control-plane#245); Envoy 1.40 gives up only after the initial
// fetch timeout (15 s) and takes the one it had. A changed cluster
// that waits that long keeps its old TLS context, SANs and revocation
// epoch, and the connections of its old pool, for as long.
//
// The load assignments are forgotten from what the stream has, so the
// stream's next endpoints request gets them; if one is already waiting,
// it is answered now, behind the clusters (the ADS server sends in the
// order responses come, and its channel has room for one per kind).
// The node's lock is held.
func (r *response) reassign(st *sent) {
	prev := st[Clusters].set
	if prev == nil || prev == r.set {
		return
	}
	d := r.set.diff(prev)
	changed := d.fresh
	if d.allFresh {
		changed = r.set.all()
	}
	var stale []string
	for _, p := range changed {
		if p.eds == "" {
			continue
		}
		if v := st.version(Clusters, p.Name); v != "" && v != p.Version {
			stale = append(stale, p.eds)
		}
	}
	if len(stale) == 0 || !st.forget(Endpoints, stale) {
		return
	}
	n := r.w.node
	for w := range n.watches[Endpoints] {
		if w.stream != r.w.stream || n.config[Endpoints] == nil {
			continue
		}
		if resp := respond(w, n.config[Endpoints]); resp != nil {
			w.out <- resp
			delete(n.watches[Endpoints], w)
		}
	}
}

// GetDiscoveryResponse builds a new message each time: the server sets
// its nonce, so it cannot be shared. The resources are the shared ones.
//
// The server calls it once, when it sends the response: that is when
// the stream is recorded as having the response's resources.
func (r *response) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	r.commit()
	var anys []*anypb.Any
	var bufs []mem.Buffer
	if r.whole {
		// The whole set, in its order: its shared slices and buffers.
		anys, bufs = r.set.anys(), r.set.buffers()
	} else {
		anys = make([]*anypb.Any, len(r.pieces))
		bufs = make([]mem.Buffer, len(r.pieces))
		for i, p := range r.pieces {
			anys[i], bufs[i] = p.any, p.enc
		}
	}
	out := &discoveryv3.DiscoveryResponse{VersionInfo: r.set.Version, Resources: anys, TypeUrl: r.w.req.GetTypeUrl()}
	register(out, anys, bufs)
	return out, nil
}

func (r *response) GetRequest() *discoveryv3.DiscoveryRequest { return r.w.req }
func (r *response) GetVersion() (string, error)               { return r.set.Version, nil }
func (r *response) GetResponseVersion() string                { return r.set.Version }

// GetReturnedResources is nil: the cache keeps what streams were sent.
func (r *response) GetReturnedResources() map[string]string { return nil }
func (r *response) GetContext() context.Context             { return context.Background() }
