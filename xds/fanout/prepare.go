package fanout

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bulwarkmesh/bulwark/xds"
)

// Kind is one of the four resource types a sidecar is sent.
type Kind int

// The kinds, in the order ADS answers them when several change at once:
// clusters before their endpoints, listeners before their routes.
const (
	Clusters Kind = iota
	Endpoints
	Listeners
	Routes
	numKinds
)

// Kinds lists every kind in answering order.
var Kinds = [numKinds]Kind{Clusters, Endpoints, Listeners, Routes}

var typeURLs = [numKinds]string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// TypeURL returns the kind's xDS type URL.
func (k Kind) TypeURL() string { return typeURLs[k] }

func kindOf(typeURL string) (Kind, bool) {
	for k, u := range typeURLs {
		if u == typeURL {
			return Kind(k), true
		}
	}
	return 0, false
}

// fullState reports whether every response of the kind must hold every
// resource (listeners and clusters: a resource left out is removed).
// For the others a response may carry only what changed.
func (k Kind) fullState() bool { return k == Clusters || k == Listeners }

// Piece is one resource, marshaled once.
type Piece struct {
	Name string
	// Version is a hash of the encoding: equal content, equal version.
	Version string
	any     *anypb.Any
	// enc is the resource as it appears in a DiscoveryResponse: field
	// "resources" (tag, length, Any).
	enc mem.Buffer
	// eds is, for a cluster that takes its endpoints from EDS, the name
	// of its load assignment; else "".
	eds string
}

// Group is the resources of one kind of one xds.Part, sorted by name.
// Groups are shared by every node whose configuration holds the part, so
// whatever a group builds for lookups and writing, it builds once.
type Group struct {
	Version string
	Pieces  []*Piece

	once  sync.Once
	enc   mem.Buffer // every piece's encoding, in order
	anys  []*anypb.Any
	index map[string]*Piece
}

func (g *Group) build() {
	g.once.Do(func() {
		n := 0
		for _, p := range g.Pieces {
			n += p.enc.Len()
		}
		b := make([]byte, 0, n)
		g.anys = make([]*anypb.Any, len(g.Pieces))
		g.index = make(map[string]*Piece, len(g.Pieces))
		for i, p := range g.Pieces {
			b = append(b, p.enc.ReadOnlyData()...)
			g.anys[i] = p.any
			g.index[p.Name] = p
		}
		g.enc = mem.SliceBuffer(b)
	})
}

// buffer returns the encodings of all the group's pieces as one buffer:
// gRPC writes a few large buffers much faster than a thousand small ones.
func (g *Group) buffer() mem.Buffer {
	g.build()
	return g.enc
}

func (g *Group) lookup(name string) *Piece {
	g.build()
	return g.index[name]
}

// Set is what one node is sent of one kind: the union of groups that no
// two define the same name. A set holds little but its groups, so a
// node whose set is its own (its inbound side is) costs a few words.
type Set struct {
	Version string
	groups  []*Group
	n       int
	// last is the most recent diff from another set: after a change,
	// every stream of every node sharing this set asks for it.
	last atomic.Pointer[setDiff]
}

// setDiff is what a set changes relative to a previous one.
type setDiff struct {
	from      string // the previous set's version
	sameNames bool   // both have the same names
	// fresh are the pieces not in the previous set at the same version,
	// in set order; when that is every piece, allFresh and nil.
	fresh    []*Piece
	allFresh bool
}

// diff returns what s changes relative to prev. Groups the two share are
// skipped whole; the result is kept for the next stream that asks.
func (s *Set) diff(prev *Set) *setDiff {
	if d := s.last.Load(); d != nil && d.from == prev.Version {
		return d
	}
	d := &setDiff{from: prev.Version, sameNames: s.n == prev.n}
	for _, g := range s.groups {
		if slices.Contains(prev.groups, g) {
			continue
		}
		for _, p := range g.Pieces {
			q := prev.lookup(p.Name)
			if q == nil {
				d.sameNames = false
			}
			if q == nil || q.Version != p.Version {
				d.fresh = append(d.fresh, p)
			}
		}
	}
	if len(d.fresh) == s.n {
		d.fresh, d.allFresh = nil, true
	}
	s.last.Store(d)
	return d
}

// anys returns every resource, in group order: the group's own slice
// when there is one group.
func (s *Set) anys() []*anypb.Any {
	if len(s.groups) == 1 {
		s.groups[0].build()
		return s.groups[0].anys
	}
	out := make([]*anypb.Any, 0, s.n)
	for _, g := range s.groups {
		g.build()
		out = append(out, g.anys...)
	}
	return out
}

// buffers returns the encodings of every resource, a buffer per group.
func (s *Set) buffers() []mem.Buffer {
	out := make([]mem.Buffer, len(s.groups))
	for i, g := range s.groups {
		out[i] = g.buffer()
	}
	return out
}

// Len is the number of resources in the set.
func (s *Set) Len() int { return s.n }

func (s *Set) lookup(name string) *Piece {
	for _, g := range s.groups {
		if p := g.lookup(name); p != nil {
			return p
		}
	}
	return nil
}

// all returns every piece, in group order.
func (s *Set) all() []*Piece {
	if len(s.groups) == 1 {
		return s.groups[0].Pieces
	}
	out := make([]*Piece, 0, s.n)
	for _, g := range s.groups {
		out = append(out, g.Pieces...)
	}
	return out
}

// Names returns every resource name in the set, sorted.
func (s *Set) Names() []string {
	out := make([]string, 0, s.n)
	for _, p := range s.all() {
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out
}

// Config is one node's configuration: a set per kind.
type Config [numKinds]*Set

// Versions returns the version of each kind.
func (c Config) Versions() [numKinds]string {
	var v [numKinds]string
	for k, s := range c {
		if s != nil {
			v[k] = s.Version
		}
	}
	return v
}

// Preparer turns translated parts into Configs for one translation pass,
// marshaling each resource once and building each group and set once
// however many nodes share it. Safe for concurrent use.
type Preparer struct {
	mu     sync.Mutex
	pieces map[proto.Message]*Piece
	groups map[groupKey]*Group
	sets   map[string]*Set // by kind and version
	prev   *Preparer       // see Next
}

type groupKey struct {
	part *xds.Part
	kind Kind
}

// NewPreparer returns an empty preparer.
func NewPreparer() *Preparer {
	return &Preparer{pieces: map[proto.Message]*Piece{}, groups: map[groupKey]*Group{}, sets: map[string]*Set{}}
}

// Next returns a preparer for the next translation pass that takes from
// p what that pass still uses (a translator's Next keeps parts and
// resources): what it does not use is dropped with p.
func (p *Preparer) Next() *Preparer {
	n := NewPreparer()
	p.mu.Lock()
	p.prev = nil
	p.mu.Unlock()
	n.prev = p
	return n
}

// Prepare returns the configuration made of parts. No parts is the
// empty configuration: a proxy that must have nothing.
func (p *Preparer) Prepare(parts []*xds.Part) (Config, error) {
	var cfg Config
	for _, k := range Kinds {
		groups := make([]*Group, 0, len(parts))
		for _, part := range parts {
			g, err := p.group(part, k)
			if err != nil {
				return Config{}, err
			}
			if len(g.Pieces) > 0 {
				groups = append(groups, g)
			}
		}
		cfg[k] = p.set(k, groups)
	}
	return cfg, nil
}

func (p *Preparer) set(k Kind, groups []*Group) *Set {
	h := sha256.New()
	n := 0
	for _, g := range groups {
		h.Write([]byte(g.Version))
		n += len(g.Pieces)
	}
	version := hex.EncodeToString(h.Sum(nil)[:8])
	key := typeURLs[k] + "/" + version
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.sets[key]; ok {
		return s
	}
	if q := p.prev; q != nil {
		q.mu.Lock()
		s, ok := q.sets[key]
		q.mu.Unlock()
		if ok {
			p.sets[key] = s
			return s
		}
	}
	s := &Set{Version: version, groups: groups, n: n}
	p.sets[key] = s
	return s
}

func (p *Preparer) group(part *xds.Part, k Kind) (*Group, error) {
	key := groupKey{part, k}
	p.mu.Lock()
	g, ok := p.groups[key]
	p.mu.Unlock()
	if ok {
		return g, nil
	}
	if g, ok := inherited(p, func(q *Preparer) map[groupKey]*Group { return q.groups }, key); ok {
		p.mu.Lock()
		p.groups[key] = g
		p.mu.Unlock()
		return g, nil
	}
	var msgs []proto.Message
	switch k {
	case Clusters:
		msgs = asMessages(part.Clusters)
	case Endpoints:
		msgs = asMessages(part.Endpoints)
	case Listeners:
		msgs = asMessages(part.Listeners)
	case Routes:
		msgs = asMessages(part.Routes)
	}
	g = &Group{Pieces: make([]*Piece, 0, len(msgs))}
	h := sha256.New()
	var n [8]byte
	for _, m := range msgs {
		pc, err := p.piece(m, typeURLs[k])
		if err != nil {
			return nil, err
		}
		g.Pieces = append(g.Pieces, pc)
		for _, s := range []string{pc.Name, pc.Version} {
			binary.BigEndian.PutUint64(n[:], uint64(len(s)))
			h.Write(n[:])
			h.Write([]byte(s))
		}
	}
	g.Version = hex.EncodeToString(h.Sum(nil)[:8])
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.groups[key]; ok {
		return prev, nil
	}
	p.groups[key] = g
	return g, nil
}

func (p *Preparer) piece(m proto.Message, typeURL string) (*Piece, error) {
	p.mu.Lock()
	pc, ok := p.pieces[m]
	p.mu.Unlock()
	if ok {
		return pc, nil
	}
	if pc, ok := inherited(p, func(q *Preparer) map[proto.Message]*Piece { return q.pieces }, m); ok {
		p.mu.Lock()
		p.pieces[m] = pc
		p.mu.Unlock()
		return pc, nil
	}
	pc, err := NewPiece(m, typeURL)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if prev, ok := p.pieces[m]; ok {
		return prev, nil
	}
	p.pieces[m] = pc
	return pc, nil
}

// inherited looks k up in one of the previous pass's maps.
func inherited[K comparable, V any](p *Preparer, field func(*Preparer) map[K]V, k K) (V, bool) {
	p.mu.Lock()
	q := p.prev
	p.mu.Unlock()
	if q == nil {
		var zero V
		return zero, false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	v, ok := field(q)[k]
	return v, ok
}

// NewPiece marshals one resource deterministically.
func NewPiece(m proto.Message, typeURL string) (*Piece, error) {
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", typeURL, err)
	}
	sum := sha256.Sum256(value)
	a := &anypb.Any{TypeUrl: typeURL, Value: value}
	ab, err := proto.MarshalOptions{Deterministic: true}.Marshal(a)
	if err != nil {
		return nil, err
	}
	enc := protowire.AppendTag(make([]byte, 0, len(ab)+8), resourcesField, protowire.BytesType)
	enc = protowire.AppendBytes(enc, ab)
	pc := &Piece{Name: xds.ResourceName(m), Version: hex.EncodeToString(sum[:8]), any: a, enc: mem.SliceBuffer(enc)}
	if c, ok := m.(*clusterv3.Cluster); ok && c.GetType() == clusterv3.Cluster_EDS {
		pc.eds = c.GetEdsClusterConfig().GetServiceName()
		if pc.eds == "" {
			pc.eds = c.GetName()
		}
	}
	return pc, nil
}

func asMessages[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, m := range in {
		out[i] = m
	}
	return out
}
