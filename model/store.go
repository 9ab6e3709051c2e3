package model

import (
	"errors"
	"fmt"
	"reflect"
	"sync"

	memdb "github.com/hashicorp/go-memdb"
)

// Table names. They are the keys of Snapshot.Watch and what
// ReplaceState reports as changed.
const (
	TableMesh      = "mesh"
	TableServices  = "services"
	TableWorkloads = "workloads"
	TableEndpoints = "endpoints"
	TableMTLS      = "mtls_policies"
	TableAccess    = "access_policies"
)

// Tables lists every table, in a fixed order.
var Tables = []string{TableMesh, TableServices, TableWorkloads, TableEndpoints, TableMTLS, TableAccess}

type keyed interface{ Key() string }

// keyIndex indexes objects by a string method: Key for the primary index.
type keyIndex struct {
	key func(any) (string, bool)
}

func byKey(raw any) (string, bool) {
	k, ok := raw.(keyed)
	if !ok {
		return "", false
	}
	return k.Key(), true
}

func byServiceKey(raw any) (string, bool) {
	e, ok := raw.(*Endpoint)
	if !ok {
		return "", false
	}
	return e.ServiceKey(), true
}

func (ix keyIndex) FromObject(raw any) (bool, []byte, error) {
	k, ok := ix.key(raw)
	if !ok {
		return false, nil, fmt.Errorf("cannot index %T", raw)
	}
	return true, []byte(k + "\x00"), nil
}

func (keyIndex) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("want one argument")
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("argument is %T, want string", args[0])
	}
	return []byte(s + "\x00"), nil
}

func (ix keyIndex) PrefixFromArgs(args ...any) ([]byte, error) {
	b, err := ix.FromArgs(args...)
	if err != nil {
		return nil, err
	}
	return b[:len(b)-1], nil
}

// meshRow wraps the singleton mesh so it has a key.
type meshRow struct{ Mesh }

func (meshRow) Key() string { return "mesh" }

func schema() *memdb.DBSchema {
	table := func(name string, extra ...*memdb.IndexSchema) *memdb.TableSchema {
		t := &memdb.TableSchema{Name: name, Indexes: map[string]*memdb.IndexSchema{
			"id": {Name: "id", Unique: true, Indexer: keyIndex{byKey}},
		}}
		for _, ix := range extra {
			t.Indexes[ix.Name] = ix
		}
		return t
	}
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		TableMesh:      table(TableMesh),
		TableServices:  table(TableServices),
		TableWorkloads: table(TableWorkloads),
		TableEndpoints: table(TableEndpoints, &memdb.IndexSchema{
			Name: "service", Indexer: keyIndex{byServiceKey},
		}),
		TableMTLS:   table(TableMTLS),
		TableAccess: table(TableAccess),
	}}
}

// Store holds the model. It is safe for concurrent use: writers are
// serialized and readers take consistent snapshots that never block
// writers. Objects handed to the store belong to it afterwards and must
// not be modified; objects read from it must not be modified either.
type Store struct {
	db *memdb.MemDB
	mu sync.Mutex // serializes read-modify-write helpers
}

// NewStore returns an empty store whose mesh has the default trust domain.
func NewStore() *Store {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic(fmt.Sprintf("model: invalid memdb schema: %v", err)) // a programming error
	}
	s := &Store{db: db}
	tx := db.Txn(true)
	if err := tx.Insert(TableMesh, &meshRow{Mesh{TrustDomain: DefaultTrustDomain}}); err != nil {
		panic(fmt.Sprintf("model: %v", err))
	}
	tx.Commit()
	return s
}

// Snapshot returns a consistent, read-only view of the store as it is now.
func (s *Store) Snapshot() *Snapshot {
	return &Snapshot{txn: s.db.Txn(false)}
}

// State is everything a source that owns the whole mesh (the mesh file)
// describes.
type State struct {
	Mesh      Mesh
	Services  []*Service
	Workloads []*Workload
	Endpoints []*Endpoint
	MTLS      []*MTLSPolicy
	Access    []*AccessPolicy
}

// ReplaceState makes the store hold exactly st in one transaction. Objects equal to what the store holds are left alone, so
// only tables that really change fire their watch channels. It returns the
// tables that changed.
func (s *Store) ReplaceState(st *State) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx := s.db.Txn(true)
	defer tx.Abort()

	var changed []string
	mesh := &meshRow{st.Mesh}
	if cur, _ := tx.First(TableMesh, "id", "mesh"); cur == nil || !reflect.DeepEqual(cur, mesh) {
		if err := tx.Insert(TableMesh, mesh); err != nil {
			return nil, err
		}
		changed = append(changed, TableMesh)
	}
	for _, t := range []struct {
		name string
		objs []keyed
	}{
		{TableServices, asKeyed(st.Services)},
		{TableWorkloads, asKeyed(st.Workloads)},
		{TableEndpoints, asKeyed(st.Endpoints)},
		{TableMTLS, asKeyed(st.MTLS)},
		{TableAccess, asKeyed(st.Access)},
	} {
		did, err := replaceTable(tx, t.name, t.objs)
		if err != nil {
			return nil, err
		}
		if did {
			changed = append(changed, t.name)
		}
	}
	tx.Commit()
	return changed, nil
}

func asKeyed[T keyed](in []T) []keyed {
	out := make([]keyed, len(in))
	for i, o := range in {
		out[i] = o
	}
	return out
}

// replaceTable makes table hold exactly objs and reports whether it
// changed anything.
func replaceTable(tx *memdb.Txn, table string, objs []keyed) (bool, error) {
	want := make(map[string]keyed, len(objs))
	for _, o := range objs {
		if _, dup := want[o.Key()]; dup {
			return false, fmt.Errorf("%s: duplicate key %q", table, o.Key())
		}
		want[o.Key()] = o
	}
	changed := false
	it, err := tx.Get(table, "id")
	if err != nil {
		return false, err
	}
	var stale []any
	for raw := it.Next(); raw != nil; raw = it.Next() {
		k := raw.(keyed)
		w, ok := want[k.Key()]
		switch {
		case !ok:
			stale = append(stale, raw)
		case reflect.DeepEqual(w, raw):
			delete(want, k.Key())
		}
	}
	for _, raw := range stale {
		if err := tx.Delete(table, raw); err != nil {
			return false, err
		}
		changed = true
	}
	for _, o := range objs {
		if _, ok := want[o.Key()]; !ok {
			continue
		}
		if err := tx.Insert(table, o); err != nil {
			return false, err
		}
		changed = true
	}
	return changed, nil
}
