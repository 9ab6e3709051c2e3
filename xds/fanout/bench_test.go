package fanout_test

import (
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/bench/gen"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/xds"
	"github.com/bulwarkmesh/bulwark/xds/fanout"
)

// pass translates and prepares every proxy of snap, as a server's sync
// does, with tr and p.
func pass(b *testing.B, spec gen.Spec, snap *model.Snapshot, tr *xds.Translator, p *fanout.Preparer) {
	for i := 0; i < spec.Proxies; i++ {
		parts, err := tr.Parts(snap.Workload(gen.Namespace, gen.ProxyName(i)))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Prepare(parts); err != nil {
			b.Fatal(err)
		}
	}
}

var spec1000 = gen.Spec{Services: 1000, Endpoints: 5, Proxies: 1000}

// BenchmarkPass1000: a full translation pass, 1,000 proxies that each
// get 1,000 services: every resource built, checked and marshaled once.
func BenchmarkPass1000(b *testing.B) {
	store := model.NewStore()
	if _, err := store.ReplaceState(spec1000.State(0)); err != nil {
		b.Fatal(err)
	}
	snap := store.Snapshot()
	for b.Loop() {
		now := time.Now()
		pass(b, spec1000, snap, xds.NewTranslator(snap, xds.Options{Now: now, Authz: authz.NewIndex(snap, now)}), fanout.NewPreparer())
	}
}

// BenchmarkPass1000OneEndpoint: the pass after one endpoint moved, with
// the previous pass carried over (Translator.Next, Preparer.Next).
func BenchmarkPass1000OneEndpoint(b *testing.B) {
	store := model.NewStore()
	if _, err := store.ReplaceState(spec1000.State(0)); err != nil {
		b.Fatal(err)
	}
	snap := store.Snapshot()
	now := time.Now()
	tr, p := xds.NewTranslator(snap, xds.Options{Now: now}), fanout.NewPreparer()
	pass(b, spec1000, snap, tr, p)
	k := 0
	for b.Loop() {
		k++
		st := spec1000.State(0)
		gen.MoveOneEndpoint(st, k)
		changed, err := store.ReplaceState(st)
		if err != nil {
			b.Fatal(err)
		}
		tables := map[string]bool{}
		for _, t := range changed {
			tables[t] = true
		}
		snap = store.Snapshot()
		tr, p = tr.Next(snap, xds.Options{Now: now}, tables), p.Next()
		pass(b, spec1000, snap, tr, p)
	}
}
