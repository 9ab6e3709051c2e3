package incluster

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// The API server's part (conflicts, real deletes) is tested in test/kube;
// here, what a document says and how a reader counts it.

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) add(d time.Duration) { c.ns.Add(int64(d)) }
func newClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func ackOf(node string, seq uint64) trust.ProxyAck {
	return trust.ProxyAck{Node: node, AgentSeq: seq, ProxySeq: seq, Reported: true}
}

func evidenceFor(t *testing.T, c *fake.Clientset, clock *fakeClock, holder string, maxProxies int) *Evidence {
	t.Helper()
	e, err := NewEvidence(EvidenceConfig{Client: c, Namespace: "sys", Holder: holder, Now: clock.now, MaxProxies: maxProxies})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestOthersCountsOnlyWhatItCanVouchFor(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// other acts as replica-b, then the clock moves by after.
		other       func(e *Evidence) error
		after       time.Duration
		wantMissing string // "" for none
		wantProxies int
	}{
		{name: "fresh", other: func(e *Evidence) error { return e.Publish(ctx, []trust.ProxyAck{ackOf("ns/a", 2)}) }, wantProxies: 1},
		{name: "fresh at the edge", after: 15 * time.Second,
			other: func(e *Evidence) error { return e.Publish(ctx, []trust.ProxyAck{ackOf("ns/a", 2)}) }, wantProxies: 1},
		{name: "stale", after: 16 * time.Second, wantMissing: "replica-b: trust evidence 16s old (stale after 15s)",
			other: func(e *Evidence) error { return e.Publish(ctx, []trust.ProxyAck{ackOf("ns/a", 2)}) }},
		{name: "started, not reported yet", other: func(e *Evidence) error { return e.announce(ctx) },
			wantMissing: "replica-b: has not reported its proxies yet"},
		{name: "truncated", wantMissing: "replica-b: trust evidence truncated (3 proxies, at most 2 published",
			other: func(e *Evidence) error {
				return e.Publish(ctx, []trust.ProxyAck{ackOf("ns/a", 2), ackOf("ns/b", 2), ackOf("ns/c", 2)})
			}},
		{name: "too many leaves", wantMissing: "replica-b: trust evidence truncated",
			other: func(e *Evidence) error {
				a := ackOf("ns/a", 2)
				a.Leaves = make([]trust.LeafInfo, MaxLeavesPerProxy+1)
				return e.Publish(ctx, []trust.ProxyAck{a})
			}},
		{name: "just left", after: 5 * time.Second, other: func(e *Evidence) error { return e.leave(ctx) },
			wantMissing: "replica-b: shut down 5s ago; its proxies are reconnecting"},
		{name: "left, forgotten after the stale period", after: 16 * time.Second, other: func(e *Evidence) error { return e.leave(ctx) }},
		{name: "silent for ten minutes, forgotten", after: 10*time.Minute + time.Second,
			other: func(e *Evidence) error { return e.Publish(ctx, []trust.ProxyAck{ackOf("ns/a", 2)}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientset()
			clock := newClock()
			a := evidenceFor(t, c, clock, "replica-a", 2)
			if err := a.Publish(ctx, []trust.ProxyAck{ackOf("ns/own", 1)}); err != nil {
				t.Fatal(err)
			}
			if err := tc.other(evidenceFor(t, c, clock, "replica-b", 2)); err != nil {
				t.Fatal(err)
			}
			clock.add(tc.after)
			acks, missing, err := a.Others(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(acks) != tc.wantProxies {
				t.Errorf("proxies %v, want %d", acks, tc.wantProxies)
			}
			for _, p := range acks {
				if p.Replica != "replica-b" {
					t.Errorf("proxy %s counted for replica %q", p.Node, p.Replica)
				}
			}
			switch {
			case tc.wantMissing == "" && len(missing) > 0:
				t.Errorf("missing %q, want none", missing)
			case tc.wantMissing != "" && (len(missing) != 1 || !strings.Contains(missing[0], tc.wantMissing)):
				t.Errorf("missing %q, want one containing %q", missing, tc.wantMissing)
			}
			cms, _ := c.CoreV1().ConfigMaps("sys").List(ctx, metav1.ListOptions{})
			forgotten := len(cms.Items) == 1
			if wantForgotten := strings.Contains(tc.name, "forgotten"); forgotten != wantForgotten {
				t.Errorf("replica-b's configmap deleted: %v, want %v", forgotten, wantForgotten)
			}
		})
	}
}

// The laggards are the ones a truncated list keeps, since they are the
// ones that hold a gate.
func TestPublishKeepsTheLaggardsFirst(t *testing.T) {
	e := &Evidence{cfg: EvidenceConfig{Holder: "r", MaxProxies: 2, Period: time.Second, Now: time.Now}}
	quiet := trust.ProxyAck{Node: "ns/quiet", AgentSeq: 9, ProxySeq: 9}
	d := e.doc([]trust.ProxyAck{ackOf("ns/z", 5), quiet, {Node: "ns/envoy-behind", AgentSeq: 5, ProxySeq: 3, Reported: true}, ackOf("ns/a", 5)})
	var got []string
	for _, p := range d.Proxies {
		got = append(got, p.Node)
	}
	if want := []string{"ns/quiet", "ns/envoy-behind"}; fmt.Sprint(got) != fmt.Sprint(want) || !d.Truncated || d.Total != 4 {
		t.Errorf("kept %v (truncated %v, total %d), want %v, truncated, total 4", got, d.Truncated, d.Total, want)
	}
}

func TestUnreadableEvidenceIsMissing(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	c := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: EvidencePrefix + "odd", Namespace: "sys",
		Labels: map[string]string{EvidenceLabel: "true"}, CreationTimestamp: metav1.NewTime(clock.now())},
		Data: map[string]string{EvidenceKey: "{not json"}})
	_, missing, err := evidenceFor(t, c, clock, "replica-a", 0).Others(ctx)
	if err != nil || len(missing) != 1 || !strings.Contains(missing[0], "replica odd: unreadable trust evidence") {
		t.Errorf("missing %q, err %v", missing, err)
	}
}

func TestEvidenceConfigMapName(t *testing.T) {
	for in, want := range map[string]string{
		"bulwark-7d9f-x2":        "bulwark-trust-evidence-bulwark-7d9f-x2",
		"Host_Name:42":           "bulwark-trust-evidence-host-name-42",
		strings.Repeat("a", 300): "bulwark-trust-evidence-" + strings.Repeat("a", 253-len(EvidencePrefix)),
		"pod.a/../":              "bulwark-trust-evidence-pod-a",
	} {
		if got := EvidenceConfigMapName(in); got != want {
			t.Errorf("EvidenceConfigMapName(%q) = %q, want %q", in, got, want)
		}
	}
}

// Publish is called every second by the trust loop: the same proxies are
// written again only once a period has passed; a change at once.
func TestPublishWritesChangesAtOnceAndTheSameEveryPeriod(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clock := newClock()
	e := evidenceFor(t, c, clock, "replica-a", 0)
	writes := func() int {
		n := 0
		for _, a := range c.Actions() {
			if a.GetVerb() == "create" || a.GetVerb() == "update" {
				n++
			}
		}
		return n
	}
	same := []trust.ProxyAck{ackOf("ns/a", 1)}
	for i, step := range []struct {
		after time.Duration
		acks  []trust.ProxyAck
		want  int
	}{
		{0, same, 1},
		{time.Second, same, 1},
		{time.Second, []trust.ProxyAck{ackOf("ns/a", 2)}, 2},
		{time.Second, []trust.ProxyAck{ackOf("ns/a", 2)}, 2},
		{DefaultPublishPeriod, []trust.ProxyAck{ackOf("ns/a", 2)}, 3},
	} {
		clock.add(step.after)
		if err := e.Publish(ctx, step.acks); err != nil {
			t.Fatal(err)
		}
		if got := writes(); got != step.want {
			t.Fatalf("step %d: %d writes, want %d", i, got, step.want)
		}
	}
}

// TestEvidenceFromAheadIsMissing: a replica whose clock is ahead stamps
// its evidence in this replica's future. Staleness is judged on this
// replica's clock, so such a document would count as fresh for as long
// as the clocks disagree, whether or not its replica still publishes: it
// is missing instead, naming the skew.
func TestEvidenceFromAheadIsMissing(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset()
	clock := newClock()
	ahead := newClock()
	ahead.add(time.Hour)
	a := evidenceFor(t, c, clock, "replica-a", 10)
	if err := evidenceFor(t, c, ahead, "replica-b", 10).Publish(ctx, []trust.ProxyAck{ackOf("ns/b", 1)}); err != nil {
		t.Fatal(err)
	}
	acks, missing, err := a.Others(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(acks) != 0 || len(missing) != 1 || !strings.Contains(missing[0], "replica-b: trust evidence published 1h0m0s ahead of this replica's clock") {
		t.Errorf("Others = %v, missing %q; want no proxy and replica-b missing for its clock", acks, missing)
	}
	// Within the stale period the skew is tolerated.
	clock.add(time.Hour - 10*time.Second)
	if acks, missing, _ := a.Others(ctx); len(acks) != 1 || len(missing) != 0 {
		t.Errorf("10s of skew: Others = %v, missing %q; want replica-b's proxy counted", acks, missing)
	}
}
