package trust

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/controlplane"
)

// ca runs `bulwark ca SUB --socket <the mesh's admin socket> ARGS...` and
// returns its output (stdout then stderr) and how long it took.
func (m *mesh) ca(timeout time.Duration, sub string, args ...string) (string, time.Duration, error) {
	full := append([]string{"ca", sub, "--socket", m.adminSocket}, args...)
	start := time.Now()
	out, err := m.run(timeout, full...)
	return out, time.Since(start), err
}

// mustCA is ca that fails the test when the command fails.
func (m *mesh) mustCA(timeout time.Duration, sub string, args ...string) (string, time.Duration) {
	m.t.Helper()
	out, took, err := m.ca(timeout, sub, args...)
	if err != nil {
		m.t.Fatalf("bulwark ca %s %s: %v\n%s", sub, strings.Join(args, " "), err, out)
	}
	return out, took
}

// status is `bulwark ca status --json`.
func (m *mesh) status() *cav1.TrustStatus {
	m.t.Helper()
	stdout, stderr, err := m.runSplit(30*time.Second, "ca", "status", "--socket", m.adminSocket, "--json")
	if err != nil {
		m.t.Fatalf("bulwark ca status --json: %v\n%s", err, stderr)
	}
	var st cav1.TrustStatus
	if err := protojson.Unmarshal([]byte(stdout), &st); err != nil {
		m.t.Fatalf("bulwark ca status --json: %v\n%s", err, stdout)
	}
	return &st
}

// active returns the active authority of st, failing the test unless
// there is exactly one.
func active(t testing.TB, st *cav1.TrustStatus) *cav1.TrustAuthority {
	t.Helper()
	var out []*cav1.TrustAuthority
	for _, a := range st.GetAuthorities() {
		if a.GetPhase() == string(trust.Active) {
			out = append(out, a)
		}
	}
	if len(out) != 1 {
		t.Fatalf("%d active authorities, want exactly one: %s", len(out), authorities(st))
	}
	return out[0]
}

// authority returns the authority id of st, or nil.
func authority(st *cav1.TrustStatus, id string) *cav1.TrustAuthority {
	for _, a := range st.GetAuthorities() {
		if a.GetId() == id {
			return a
		}
	}
	return nil
}

// authorities describes st's authorities for messages: id:phase ...
func authorities(st *cav1.TrustStatus) string {
	var parts []string
	for _, a := range st.GetAuthorities() {
		s := a.GetId() + ":" + a.GetPhase()
		if a.GetRevoked() {
			s += "(revoked)"
		}
		parts = append(parts, s)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// watcher follows a control plane's trust status over its admin socket
// while a test runs, and remembers when each rotation step and each
// phase of each authority was first seen: the timings of a rotation as
// an observer polling every 100ms sees them.
type watcher struct {
	start  time.Time
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	seen []string // "+1.234s step activate", in order
	keys map[string]bool
}

func (m *mesh) watch() *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{start: time.Now(), cancel: cancel, done: make(chan struct{}), keys: map[string]bool{}}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			// The control plane may be restarted meanwhile: dial again
			// every time.
			if st := adminStatus(ctx, m.adminSocket); st != nil {
				if r := st.GetRotation(); r != nil {
					w.note("step " + r.GetStep())
				}
				for _, a := range st.GetAuthorities() {
					w.note(fmt.Sprintf("authority %s %s", a.GetId(), a.GetPhase()))
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *watcher) note(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.keys[key] {
		w.keys[key] = true
		w.seen = append(w.seen, fmt.Sprintf("+%s %s", time.Since(w.start).Round(10*time.Millisecond), key))
	}
}

// stop stops watching and returns what was seen, in order.
func (w *watcher) stop() []string {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.seen...)
}

// adminStatus asks the admin socket for the status; nil if it does not
// answer within a second.
func adminStatus(ctx context.Context, socket string) *cav1.TrustStatus {
	c, conn, err := controlplane.DialAdmin(socket)
	if err != nil {
		return nil
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := c.Status(ctx, &cav1.StatusRequest{})
	if err != nil {
		return nil
	}
	return st
}

// eventTimings lists the events of st at or after since, with their time
// from since and from the event before: what the control plane recorded
// of each step.
func eventTimings(st *cav1.TrustStatus, since time.Time) []string {
	var out []string
	prev := since
	for _, e := range st.GetEvents() {
		at := e.GetAt().AsTime()
		if at.Before(since.Add(-time.Second)) {
			continue
		}
		out = append(out, fmt.Sprintf("%s %s at %s (%s after the previous)", e.GetAction(), e.GetAuthority(),
			offset(at, since), at.Sub(prev).Round(time.Millisecond)))
		prev = at
	}
	return out
}
