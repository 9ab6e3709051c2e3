package fanout

import (
	"context"
	"errors"
	"sort"
	"sync"

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
// proxy never waits on half of a change, as ADS requires).
type Cache struct {
	mu    sync.RWMutex
	nodes map[string]*node
}

type node struct {
	mu      sync.Mutex
	config  Config
	watches [numKinds]map[*watch]struct{}
	// removed is set, under mu, when the node leaves Cache.nodes: whoever
	// holds it then must look the node up again.
	removed bool
}

type watch struct {
	kind Kind
	req  *cachev3.Request
	sub  cachev3.Subscription
	out  chan cachev3.Response
}

var _ cachev3.Cache = (*Cache)(nil)

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{nodes: map[string]*node{}} }

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
		n = &node{}
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
	n := c.lockNode(req.GetNode().GetId())
	defer n.mu.Unlock()
	w := &watch{kind: k, req: req, sub: sub, out: out}
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

// respond returns the response w calls for given s, or nil.
func respond(w *watch, s *Set) *response {
	known := w.sub.ReturnedResources()
	if w.kind.fullState() {
		if w.sub.IsWildcard() {
			if w.req.GetVersionInfo() == s.Version {
				return nil
			}
			return newResponse(w, s.Version, s.all(), nil)
		}
		// A proxy that names the listeners or clusters it wants (Envoy's
		// sidecars do not) gets those of them that exist.
		subscribed := w.sub.SubscribedResources()
		var pieces []*Piece
		returned := map[string]string{}
		fresh := w.req.GetVersionInfo() != s.Version
		for name := range subscribed {
			if p := s.lookup(name); p != nil {
				pieces = append(pieces, p)
				returned[name] = p.Version
				if _, ok := known[name]; !ok {
					fresh = true
				}
			}
		}
		if !fresh {
			return nil
		}
		return newResponse(w, s.Version, sortPieces(pieces), returned)
	}
	var names map[string]struct{}
	if w.sub.IsWildcard() {
		names = make(map[string]struct{}, s.n)
		for _, p := range s.all() {
			names[p.Name] = struct{}{}
		}
	} else {
		names = w.sub.SubscribedResources()
	}
	var pieces []*Piece
	for name := range names {
		p := s.lookup(name)
		if p == nil {
			return nil // not there yet: wait for the rest of the change
		}
		if v, ok := known[name]; !ok || v != p.Version {
			pieces = append(pieces, p)
		}
	}
	if len(pieces) == 0 {
		return nil
	}
	returned := s.Versions()
	if len(names) != s.n {
		returned = make(map[string]string, len(names))
		for name := range names {
			returned[name] = s.lookup(name).Version
		}
	}
	return newResponse(w, s.Version, sortPieces(pieces), returned)
}

func sortPieces(p []*Piece) []*Piece {
	sort.Slice(p, func(i, j int) bool { return p[i].Name < p[j].Name })
	return p
}

// response is one answer to one watch. It implements cachev3.Response.
type response struct {
	req      *cachev3.Request
	version  string
	pieces   []*Piece
	returned map[string]string
}

func newResponse(w *watch, version string, pieces []*Piece, returned map[string]string) *response {
	return &response{req: w.req, version: version, pieces: pieces, returned: returned}
}

// GetDiscoveryResponse builds a new message each time: the server sets
// its nonce, so it cannot be shared. The resources are the shared ones.
func (r *response) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	anys := make([]*anypb.Any, len(r.pieces))
	for i, p := range r.pieces {
		anys[i] = p.any
	}
	out := &discoveryv3.DiscoveryResponse{VersionInfo: r.version, Resources: anys, TypeUrl: r.req.GetTypeUrl()}
	register(out, r.pieces)
	return out, nil
}

func (r *response) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }
func (r *response) GetVersion() (string, error)               { return r.version, nil }
func (r *response) GetResponseVersion() string                { return r.version }
func (r *response) GetReturnedResources() map[string]string   { return r.returned }
func (r *response) GetContext() context.Context               { return context.Background() }
