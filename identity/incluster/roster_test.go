package incluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// writesOf counts the creates and updates c has seen.
func writesOf(c *fake.Clientset) int {
	n := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == "create" || a.GetVerb() == "update" {
			n++
		}
	}
	return n
}

// A roster saved by one run of a replica is what the next run, under the
// same holder name, reads: through the evidence written around it (the
// pending document of a start, every Publish, the leaving one).
func TestRosterSurvivesTheEvidenceAndARestart(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clock := newClock()
	first := evidenceFor(t, c, clock, "replica-a", 0)
	if r := first.readRoster(ctx); !r.known || r.err != nil || len(r.nodes) != 0 {
		t.Fatalf("first start, no configmap: %+v, want a known empty roster", r)
	}
	if err := first.announce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := first.saveRoster(ctx, []string{"ns/b", "ns/a", "ns/b"}); err != nil {
		t.Fatal(err)
	}
	if err := first.Publish(ctx, []trust.ProxyAck{ackOf("ns/a", 1), ackOf("ns/b", 1)}); err != nil {
		t.Fatal(err)
	}
	if err := first.leave(ctx); err != nil {
		t.Fatal(err)
	}

	again := evidenceFor(t, c, clock, "replica-a", 0)
	r := again.readRoster(ctx)
	if !r.known || r.err != nil || fmt.Sprint(r.nodes) != "[ns/a ns/b]" {
		t.Fatalf("after a restart: %+v, want the known roster [ns/a ns/b]", r)
	}
	if err := again.announce(ctx); err != nil {
		t.Fatal(err)
	}
	if r := again.readRoster(ctx); fmt.Sprint(r.nodes) != "[ns/a ns/b]" {
		t.Errorf("the start's pending evidence lost the roster: %+v", r)
	}
	// Another replica reads the evidence and nothing of the roster.
	acks, missing, err := evidenceFor(t, c, clock, "replica-b", 0).Others(ctx)
	if err != nil || len(acks) != 0 || len(missing) != 1 || !strings.Contains(missing[0], "has not reported") {
		t.Errorf("replica-b's view of replica-a: %v, missing %q, %v", acks, missing, err)
	}
}

// The roster is written when it changes, and only then: the trust loop
// offers it every second.
func TestRosterUnchangedIsNotRewritten(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clock := newClock()
	e := evidenceFor(t, c, clock, "replica-a", 0)
	if err := e.announce(ctx); err != nil {
		t.Fatal(err)
	}
	for i, step := range []struct {
		nodes []string
		want  int // writes so far, the announce's included
	}{
		{[]string{"ns/a"}, 2},
		{[]string{"ns/a"}, 2},
		{[]string{"ns/a", "ns/b"}, 3},
		{[]string{"ns/b", "ns/a"}, 3},
		{nil, 4},
		{[]string{}, 4},
	} {
		if err := e.saveRoster(ctx, step.nodes); err != nil {
			t.Fatal(err)
		}
		if got := writesOf(c); got != step.want {
			t.Fatalf("step %d (%v): %d writes, want %d", i, step.nodes, got, step.want)
		}
	}
	// Restarted, the replica finds the same proxies back: nothing to write.
	if err := e.saveRoster(ctx, []string{"ns/a"}); err != nil {
		t.Fatal(err)
	}
	before := writesOf(c)
	again := evidenceFor(t, c, clock, "replica-a", 0)
	if r := again.readRoster(ctx); !r.known || fmt.Sprint(r.nodes) != "[ns/a]" {
		t.Fatalf("read %+v", r)
	}
	if err := again.saveRoster(ctx, []string{"ns/a"}); err != nil {
		t.Fatal(err)
	}
	if got := writesOf(c); got != before {
		t.Errorf("the roster read at start, saved unchanged: %d writes, want %d", got, before)
	}
	// Forgotten by the others (deleted), its configmap made anew by the
	// next Publish: the roster is written again, unchanged as it is.
	if err := c.CoreV1().ConfigMaps("sys").Delete(ctx, again.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := again.saveRoster(ctx, []string{"ns/b"}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("roster saved without its configmap: %v, want not found", err)
	}
	if err := again.Publish(ctx, []trust.ProxyAck{ackOf("ns/a", 1)}); err != nil {
		t.Fatal(err)
	}
	if err := again.saveRoster(ctx, []string{"ns/a"}); err != nil {
		t.Fatal(err)
	}
	if r := evidenceFor(t, c, clock, "replica-a", 0).readRoster(ctx); !r.known || fmt.Sprint(r.nodes) != "[ns/a]" {
		t.Errorf("after the configmap was made anew: %+v, want [ns/a]", r)
	}
}

// What a start makes of what it finds: a roster it cannot trust to be
// whole is unknown, and the control plane waits the whole warm-up.
func TestRosterRead(t *testing.T) {
	ctx := context.Background()
	name := EvidenceConfigMapName("replica-a")
	cm := func(data map[string]string) runtime.Object {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "sys", Labels: map[string]string{EvidenceLabel: "true"}}, Data: data}
	}
	long := make([]string, 1500)
	for i := range long {
		long[i] = fmt.Sprintf("ns-%04d/%s", i, strings.Repeat("w", 200))
	}
	for _, tc := range []struct {
		name    string
		objects []runtime.Object
		save    []string // saved first, by a replica keeping at most max (default 2)
		max     int
		getErr  error
		known   bool
		nodes   string
		wantErr string
	}{
		{name: "no configmap: first start", known: true, nodes: "[]"},
		{name: "saved", save: []string{"ns/a", "ns/b"}, known: true, nodes: "[ns/a ns/b]"},
		{name: "saved empty", save: []string{}, known: true, nodes: "[]"},
		{name: "truncated", save: []string{"ns/a", "ns/b", "ns/c"}},
		{name: "too large", save: long, max: DefaultMaxProxies},
		{name: "evidence and no roster: from before rosters, or stopped warming up", objects: []runtime.Object{cm(map[string]string{EvidenceKey: "{}"})}},
		{name: "unreadable", objects: []runtime.Object{cm(map[string]string{RosterKey: "{nodes"})}, wantErr: "roster.json"},
		{name: "another version", objects: []runtime.Object{cm(map[string]string{RosterKey: `{"version":2,"nodes":[]}`})}, wantErr: "version: 2 is not 1"},
		{name: "total disagrees", objects: []runtime.Object{cm(map[string]string{RosterKey: `{"version":1,"total":3,"nodes":["ns/a"]}`})}},
		{name: "the API server fails", getErr: errors.New("etcd is away"), wantErr: "etcd is away"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset(tc.objects...)
			clock := newClock()
			if tc.save != nil {
				w := evidenceFor(t, c, clock, "replica-a", cmp.Or(tc.max, 2))
				if err := w.announce(ctx); err != nil {
					t.Fatal(err)
				}
				if err := w.saveRoster(ctx, tc.save); err != nil {
					t.Fatal(err)
				}
			}
			if tc.getErr != nil {
				c.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, tc.getErr })
			}
			r := evidenceFor(t, c, clock, "replica-a", 0).readRoster(ctx)
			if r.known != tc.known || (tc.known && fmt.Sprint(slices.Concat([]string{}, r.nodes)) != tc.nodes) {
				t.Errorf("read %+v, want known %v, nodes %s", r, tc.known, tc.nodes)
			}
			switch {
			case tc.wantErr == "" && r.err != nil:
				t.Errorf("error %v, want none", r.err)
			case tc.wantErr != "" && (r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one containing %q", r.err, tc.wantErr)
			}
		})
	}
}

// Before Start, the Coordinator has read no roster: unknown.
func TestCoordinatorRosterBeforeStart(t *testing.T) {
	c, err := NewCoordinator(CoordinatorConfig{Client: fake.NewClientset(), Namespace: "sys", Holder: "replica-a", TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		t.Fatal(err)
	}
	if nodes, known, err := c.Roster(); known || err == nil || nodes != nil {
		t.Errorf("Roster before Start: %v, %v, %v; want unknown with an error", nodes, known, err)
	}
}
