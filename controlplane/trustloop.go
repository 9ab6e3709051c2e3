package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/xds/server"
)

// Timings of the trust loop.
const (
	// trustPoll is how often the stored state is read, and the rotation in
	// progress is driven, when nothing signals a change sooner.
	trustPoll = time.Second
	// waitLogEvery bounds how often a rotation waiting on a gate is logged.
	waitLogEvery = 30 * time.Second
	// expiryWarnEvery is how often the warning of an intermediate that
	// nothing will renew is logged.
	expiryWarnEvery = 24 * time.Hour
	// loadErrLogEvery is how often the same load failure is logged again.
	loadErrLogEvery = time.Minute
	// DefaultEvidenceWarmup is Config.EvidenceWarmup's default: longer
	// than an agent's longest wait between two attempts to reconnect (a
	// minute), so that every proxy alive is back before it ends.
	DefaultEvidenceWarmup = 75 * time.Second
	// maxSaveAttempts bounds how often an admin step is redone after a
	// conflict before giving up.
	maxSaveAttempts = 5
)

// bundleReport is one agent's report of the bundle it and its Envoy hold,
// with the leaf it presented on the report's stream.
type bundleReport struct {
	Workload           string
	AgentSeq, ProxySeq uint64
	Leaf               *x509.Certificate
}

// trustManager keeps the trust State current in the rotating authority,
// drives the rotation in progress and the automatic steps while this
// replica leads, and applies the operator's steps (admin.go). It is the
// one writer of the State in this process.
type trustManager struct {
	coord TrustCoordinator
	auth  *rotatingAuthority
	// proxies and reports are what this replica sees: the proxies
	// connected over ADS and the agents' bundle reports.
	proxies func() []server.ProxyStatus
	reports func() []bundleReport
	// issuedTo returns the certificates issued here to a workload that
	// may still be valid (issuer.Server.IssuedTo).
	issuedTo func(workload string) []issuer.IssuedCert
	// nodesOf returns the workloads (namespace/name) with a SPIFFE ID, for
	// revocations by ID.
	nodesOf func(id string) []string
	// setEpoch hands the State's revocation epoch to the ADS server,
	// which drains the proxies' mutual TLS connections when it moves;
	// epoch is the one handed last (see handEpoch).
	setEpoch func(uint64)
	epoch    uint64
	mint     func(now time.Time) func(kind string, old *trust.Authority) (*trust.Authority, error)
	log      *slog.Logger
	m        *trustMetrics
	now      func() time.Time
	poll     time.Duration
	kicks    chan struct{}

	// Warm-up: until the evidence is complete after a start, every gate
	// refuses (see RosterKeeper).
	started  time.Time
	warmup   time.Duration
	roster   RosterKeeper // nil: the coordinator keeps none
	expected []string     // the roster read at start
	known    bool         // a roster was read: expected is who to wait for

	mu         sync.Mutex
	warm       bool             // the warm-up is over
	saved      []string         // the roster saved last
	waiting    *trust.GateError // what the rotation in progress waits for
	waitLogged time.Time
	loadErr    string
	loadLogged time.Time
	warned     time.Time
	warning    string
}

// localAcks joins the proxies connected here with their agents' reports:
// a proxy without a report counts as holding no bundle (Reported false);
// an agent whose Envoy is not connected over ADS (stopped, say) is
// evidence all the same, since its report says what its Envoy loaded.
func (t *trustManager) localAcks(st *trust.State) []trust.ProxyAck {
	by := map[string]*trust.ProxyAck{}
	if t.proxies != nil {
		for _, p := range t.proxies() {
			by[p.Workload] = &trust.ProxyAck{Node: p.Workload}
		}
	}
	if t.reports != nil {
		for _, r := range t.reports() {
			a := by[r.Workload]
			if a == nil {
				a = &trust.ProxyAck{Node: r.Workload}
				by[r.Workload] = a
			}
			a.Reported, a.AgentSeq, a.ProxySeq = true, r.AgentSeq, r.ProxySeq
			if r.Leaf != nil {
				a.Leaves = append(a.Leaves, trust.LeafInfo{Serial: r.Leaf.SerialNumber.Text(16), Issuer: st.IssuerOf(r.Leaf), NotAfter: r.Leaf.NotAfter})
			}
		}
	}
	out := make([]trust.ProxyAck, 0, len(by))
	for _, a := range by {
		out = append(out, *a)
	}
	slices.SortFunc(out, func(a, b trust.ProxyAck) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// evidence is what the gates decide on now: this replica's proxies and
// the other replicas'. Others that cannot be read are missing evidence,
// so every gate refuses until they can.
func (t *trustManager) evidence(ctx context.Context, st *trust.State) trust.Evidence {
	ev := trust.Evidence{Proxies: t.localAcks(st)}
	others, missing, err := t.coord.Others(ctx)
	if err != nil {
		missing = append(missing, "the other replicas' evidence: "+err.Error())
	}
	ev.Proxies = withoutSplitHalves(append(ev.Proxies, others...))
	ev.Missing = missing
	if m := t.warming(ev); m != "" {
		ev.Missing = append(ev.Missing, m)
	}
	return ev
}

// withoutSplitHalves drops the entries that only say a proxy's Envoy is
// connected over ADS (Reported false) when some replica has its agent's
// report: a sidecar's Envoy and agent hold two connections to the
// control plane's Service, which may reach two replicas, and the agent's
// report says what that Envoy loaded. Without this, such a proxy would
// hold every gate for as long as its two connections stay apart. A proxy
// no replica has a report of stays a laggard.
func withoutSplitHalves(acks []trust.ProxyAck) []trust.ProxyAck {
	reported := map[string]bool{}
	for _, a := range acks {
		if a.Reported {
			reported[a.Node] = true
		}
	}
	return slices.DeleteFunc(acks, func(a trust.ProxyAck) bool { return !a.Reported && reported[a.Node] })
}

// warming says why the evidence is not complete yet after a start, or ""
// once it is (from then on, for the life of the process): the proxies on
// the roster are not all back, or, without a roster, the warm-up has not
// passed.
func (t *trustManager) warming(ev trust.Evidence) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.warm {
		return ""
	}
	now := t.now()
	until := t.started.Add(t.warmup)
	if !now.Before(until) {
		t.warm = true
		t.log.Info("trust evidence complete: the warm-up after the start is over", "warmup", t.warmup)
		return ""
	}
	since := now.Sub(t.started).Round(time.Second)
	if !t.known {
		return fmt.Sprintf("this control plane started %s ago and does not know which proxies were connected before it: "+
			"gates wait until %s for them to reconnect", since, until.UTC().Format(time.RFC3339))
	}
	present := map[string]bool{}
	for _, p := range ev.Proxies {
		present[p.Node] = true
	}
	var back []string
	for _, n := range t.expected {
		if !present[n] {
			back = append(back, n)
		}
	}
	if len(back) == 0 {
		t.warm = true
		t.log.Info("trust evidence complete: every proxy connected before the start is back", "proxies", len(t.expected))
		return ""
	}
	shown := back[:min(len(back), 10)]
	more := ""
	if len(back) > len(shown) {
		more = fmt.Sprintf(" and %d more", len(back)-len(shown))
	}
	return fmt.Sprintf("this control plane started %s ago and %d proxies connected before are not back yet (%s%s): gates wait for them until %s",
		since, len(back), strings.Join(shown, ", "), more, until.UTC().Format(time.RFC3339))
}

// saveRoster records the proxies connected here now, once the warm-up is
// over (before, the set is partial), when it changed.
func (t *trustManager) saveRoster(ctx context.Context, acks []trust.ProxyAck) {
	if t.roster == nil {
		return
	}
	nodes := make([]string, 0, len(acks))
	for _, a := range acks {
		nodes = append(nodes, a.Node)
	}
	t.endWarmup(ctx, acks)
	t.mu.Lock()
	skip := !t.warm || (t.saved != nil && slices.Equal(nodes, t.saved))
	t.mu.Unlock()
	if skip {
		return
	}
	if err := t.roster.SaveRoster(nodes); err != nil {
		t.logWait("cannot save the roster of connected proxies", err)
		return
	}
	t.mu.Lock()
	t.saved = nodes
	t.mu.Unlock()
}

// endWarmup ends the warm-up, gates asked or not (a replica that does not
// lead may be asked none): on its own clock, or once every proxy on the
// roster is back, connected here or reported by another replica (a proxy
// of this replica may have reconnected to another while it was away).
// The others' evidence is read only while the warm-up waits on a roster.
func (t *trustManager) endWarmup(ctx context.Context, acks []trust.ProxyAck) {
	t.mu.Lock()
	waiting := !t.warm && t.known
	t.mu.Unlock()
	ev := trust.Evidence{Proxies: acks}
	if waiting {
		if others, _, err := t.coord.Others(ctx); err == nil {
			ev.Proxies = append(slices.Clone(acks), others...)
		}
	}
	t.warming(ev)
}

// run keeps the State current and, while this replica leads, drives it,
// until ctx ends.
func (t *trustManager) run(ctx context.Context) error {
	tick := time.NewTicker(t.poll)
	defer tick.Stop()
	for {
		switch st := t.reload(ctx); {
		case st != nil && t.coord.Leading():
			t.drive(ctx)
		case st != nil:
			t.setWaiting(nil)
			t.learnHere(ctx, st)
		default:
			t.setWaiting(nil)
		}
		acks := t.localAcks(t.auth.State())
		if err := t.coord.Publish(ctx, acks); err != nil && ctx.Err() == nil {
			t.log.Warn("cannot publish this replica's trust evidence", "err", err)
		}
		t.saveRoster(ctx, acks)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-t.kicks:
		case <-t.coord.Changed():
		}
	}
}

// reload loads the stored State and installs it. A State that does not
// load, or cannot be used, is logged (with the store's error, which names
// the file and field) and counted, and the last good one stays in use;
// nil is returned then.
func (t *trustManager) reload(ctx context.Context) *trust.State {
	inUse := t.auth.State()
	st, err := t.coord.Store().Load(ctx)
	if err == nil {
		_, err = t.auth.install(st)
	}
	if err == nil {
		t.handEpoch(st.RevocationEpoch)
	}
	if errors.Is(err, errSequenceBack) && t.auth.State() != inUse {
		// Read before a save of this process (an admin step) that was
		// installed meanwhile: not a store gone back. The next tick reads
		// the new one.
		return nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errSequenceBack) {
			err = fmt.Errorf("%s: %w", storeName(t.coord.Store()), err)
		}
		t.m.loadErrors.Inc()
		t.mu.Lock()
		again := err.Error() == t.loadErr && t.now().Sub(t.loadLogged) < loadErrLogEvery
		if !again {
			t.loadErr, t.loadLogged = err.Error(), t.now()
		}
		t.mu.Unlock()
		if !again {
			args := []any{"err", err, "sequence_in_use", t.auth.State().Sequence}
			if st != nil {
				args = append(args, "stored_sequence", st.Sequence, "store", storeName(t.coord.Store()))
			}
			t.log.Error("the stored trust state cannot be used; the last good one stays in use", args...)
		}
		return nil
	}
	t.mu.Lock()
	if t.loadErr != "" {
		t.log.Info("the stored trust state loads again", "sequence", st.Sequence)
	}
	t.loadErr = ""
	t.mu.Unlock()
	return st
}

// storeName names where the State is stored, for an operator: the state
// file's path, or what the store says it is.
func storeName(s trust.Store) string {
	switch x := s.(type) {
	case interface{ Path() string }:
		return x.Path()
	case fmt.Stringer:
		return x.String()
	}
	return fmt.Sprintf("the trust state store (%T)", s)
}

// wentBack returns an error when the stored State st is below the one in
// use (errSequenceBack, which reload logs and counts): no step is taken
// on it, since what it would save would not be used either.
func (t *trustManager) wentBack(st *trust.State) error {
	if inUse := t.auth.State(); inUse != nil && st.Sequence < inUse.Sequence {
		return fmt.Errorf("%s: %w: the stored trust state is at bundle sequence %d, below the %d in use; see the control plane's log",
			storeName(t.coord.Store()), errSequenceBack, st.Sequence, inUse.Sequence)
	}
	return nil
}

// installSaved installs a State this process just saved, and says
// whether it did. One below the State in use is not an error: another
// writer saved after it and that newer State is installed already.
func (t *trustManager) installSaved(st *trust.State) bool {
	_, err := t.auth.install(st)
	switch {
	case errors.Is(err, errSequenceBack):
		return false
	case err != nil:
		t.log.Error("the trust state just saved cannot be used; the last good one stays in use", "err", err)
		return false
	}
	return true
}

// drive takes the automatic steps on the State as stored now (loaded
// afresh: the one installed is shared, never changed in place), and saves
// it if they changed it: revocations pruned and completed with the
// serials the evidence shows, one step of the rotation in progress, an
// automatic renewal started when due. A save that conflicts is dropped:
// the next tick starts again from the new State. Each step is saved
// before the next is taken, so a process killed at any point leaves a
// State a successor resumes from (a minted authority is stored with the
// rotation that names it, in one save).
func (t *trustManager) drive(ctx context.Context) {
	st, err := t.coord.Store().Load(ctx)
	if err != nil || t.wentBack(st) != nil {
		return // reload logs it
	}
	now := t.now()
	op := trust.Operation{Who: "bulwark (automatic)", Now: now}
	last := lastEvent(st)
	changed := false
	if trust.Prune(st, now) {
		changed = true
	}
	ev := t.evidence(ctx, st)
	if t.learnSerials(st, ev, op) {
		changed = true
	}
	if st.Rotation != nil {
		rop := op
		rop.Who = "bulwark (rotation by " + st.Rotation.By + ")"
		stepped, err := trust.Advance(st, ev, rop, t.mint(now))
		var g *trust.GateError
		switch {
		case errors.As(err, &g):
			t.setWaiting(g)
		case err != nil:
			t.setWaiting(nil)
			t.logWait("the rotation in progress cannot go on", err)
		default:
			t.setWaiting(nil)
		}
		changed = changed || stepped
	} else {
		t.setWaiting(nil)
	}
	if trust.DrainDue(st, ev, now) {
		// Every proxy holds the CRLs that refuse the new certificates (or
		// the deadline passed): close the connections they already hold.
		trust.OrderDrain(st, op)
		changed = true
	}
	due, warn, why := trust.RenewalDue(st, now)
	t.expiryWarning(warn, why)
	if due {
		aop := op
		aop.Who, aop.Reason = "bulwark (automatic renewal)", why
		if err := trust.StartRotation(st, "intermediate", aop); err != nil {
			t.logWait("automatic renewal of the intermediate cannot start", err)
		} else {
			st.Rotation.Auto = true
			changed = true
			t.log.Info("automatic renewal of the intermediate started", "why", why)
		}
	}
	if !changed {
		return
	}
	if err := t.coord.Store().Save(ctx, st); err != nil {
		if errors.Is(err, trust.ErrConflict) {
			t.m.conflicts.Inc()
			return
		}
		if ctx.Err() == nil {
			t.logWait("cannot save the trust state", err)
		}
		return
	}
	t.audit(newEvents(st, last))
	if t.installSaved(st) {
		t.handEpoch(st.RevocationEpoch)
	}
}

// learnSerials adds to each revocation of a workload or SPIFFE ID the
// serials of the leaves that the evidence shows its workloads present, so
// that they go on their issuers' CRLs.
func (t *trustManager) learnSerials(st *trust.State, ev trust.Evidence, op trust.Operation) bool {
	changed := false
	for _, r := range slices.Clone(st.Revocations) {
		if r.Kind == trust.BySerial {
			continue
		}
		if leaves := t.leavesOf(st, r.Kind, r.Value, ev, r.Serials); len(leaves) > 0 && trust.AddSerials(st, r.Kind, r.Value, leaves, op) {
			changed = true
		}
	}
	return changed
}

// learnHere is what a replica that does not lead does of the automatic
// steps: it adds to the revocations the serials only it knows (the
// certificates it issued, the leaves its agents present). Only the leader
// drives the State, but it learns those only while the workload is
// connected to it, so without this a certificate issued by another
// replica before the revocation would stay off the CRLs. The save is
// compare-and-swap and AddSerials adds only what is new, so it cannot
// undo the leader's work: a conflict is dropped and tried again at the
// next tick. installed is the State in use (shared: only read here).
func (t *trustManager) learnHere(ctx context.Context, installed *trust.State) {
	ev := trust.Evidence{Proxies: t.localAcks(installed)}
	now := t.now()
	news := false
	for _, r := range installed.Revocations {
		if r.Kind == trust.BySerial {
			continue
		}
		for _, l := range t.leavesOf(installed, r.Kind, r.Value, ev, r.Serials) {
			news = news || l.NotAfter.IsZero() || l.NotAfter.After(now)
		}
	}
	if !news {
		return
	}
	st, err := t.coord.Store().Load(ctx)
	if err != nil || t.wentBack(st) != nil {
		return // reload logs it
	}
	last := lastEvent(st)
	if !t.learnSerials(st, ev, trust.Operation{Who: "bulwark (automatic)", Now: now}) {
		return
	}
	if err := t.coord.Store().Save(ctx, st); err != nil {
		if errors.Is(err, trust.ErrConflict) {
			t.m.conflicts.Inc()
		} else if ctx.Err() == nil {
			t.logWait("cannot save the serials this replica knows of revoked workloads", err)
		}
		return
	}
	t.audit(newEvents(st, last))
	t.installSaved(st)
}

// leavesOf returns the leaves of the workloads a revocation names (a
// workload; or every workload with a SPIFFE ID): those the evidence shows
// them present, and every certificate issued to them here that may still
// be valid, leaving out the serials already known.
func (t *trustManager) leavesOf(st *trust.State, kind trust.RevocationKind, value string, ev trust.Evidence, known []string) []trust.LeafInfo {
	var nodes []string
	switch kind {
	case trust.ByWorkload:
		nodes = []string{value}
	case trust.ByID:
		if t.nodesOf != nil {
			nodes = t.nodesOf(value)
		}
	default:
		return nil
	}
	var leaves []trust.LeafInfo
	add := func(l trust.LeafInfo) {
		if !slices.Contains(known, l.Serial) && !slices.ContainsFunc(leaves, func(x trust.LeafInfo) bool { return x.Serial == l.Serial }) {
			leaves = append(leaves, l)
		}
	}
	for _, p := range ev.Proxies {
		if slices.Contains(nodes, p.Node) {
			for _, l := range p.Leaves {
				add(l)
			}
		}
	}
	// Every certificate issued here that may still be valid, not only the
	// one presented now: a key stolen before the workload's last renewal
	// came with a certificate that peers accept until it expires.
	if t.issuedTo != nil {
		for _, n := range nodes {
			for _, c := range t.issuedTo(n) {
				add(trust.LeafInfo{Serial: c.Serial, Issuer: issuerByKeyID(st, c.AuthorityKeyID), NotAfter: c.NotAfter})
			}
		}
	}
	return leaves
}

// issuerByKeyID returns the ID of the one authority whose signing
// certificate has the subject key identifier aki, or "" when none or
// several have (the serial then goes on every authority's CRL).
func issuerByKeyID(st *trust.State, aki []byte) string {
	if st == nil || len(aki) == 0 {
		return ""
	}
	id := ""
	for _, a := range st.Authorities {
		if bytes.Equal(a.Signing().SubjectKeyId, aki) {
			if id != "" {
				return ""
			}
			id = a.ID
		}
	}
	return id
}

// setWaiting records what the rotation waits for (nil: nothing), and
// logs it at most every 30 seconds, with the laggards.
func (t *trustManager) setWaiting(g *trust.GateError) {
	t.mu.Lock()
	prev := t.waiting
	t.waiting = g
	log := g != nil && (prev == nil || prev.Step != g.Step || t.now().Sub(t.waitLogged) >= waitLogEvery)
	if log {
		t.waitLogged = t.now()
	}
	t.mu.Unlock()
	if g != nil {
		t.m.waiting.Set(1)
	} else {
		t.m.waiting.Set(0)
	}
	if log {
		t.log.Info("rotation waiting", "step", g.Step, "authority", g.Authority, "why", g.Why, "laggards", g.Laggards)
	}
}

// Waiting returns what the rotation in progress waits for, or nil.
func (t *trustManager) Waiting() *trust.GateError {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.waiting
}

// logWait logs an error of the automatic steps at most every 30 seconds.
func (t *trustManager) logWait(msg string, err error) {
	t.mu.Lock()
	log := t.now().Sub(t.waitLogged) >= waitLogEvery
	if log {
		t.waitLogged = t.now()
	}
	t.mu.Unlock()
	if log {
		t.log.Error(msg, "err", err)
	}
}

// expiryWarning sets the gauge of an intermediate that nothing will
// renew, and logs it once a day.
func (t *trustManager) expiryWarning(warn bool, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !warn {
		t.m.expiring.Set(0)
		t.warning = ""
		return
	}
	t.m.expiring.Set(1)
	t.warning = why
	if t.warned.IsZero() || t.now().Sub(t.warned) >= expiryWarnEvery {
		t.warned = t.now()
		t.log.Warn("the signing certificate expires soon and will not be renewed automatically", "why", why)
	}
}

// warnings are the conditions an operator should see in status.
func (t *trustManager) warnings() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var w []string
	if t.warning != "" {
		w = append(w, t.warning)
	}
	if t.loadErr != "" {
		w = append(w, "the stored trust state cannot be used (the last good one is in use): "+t.loadErr)
	}
	return w
}

// mutate applies step to the State as stored now, with evidence gathered
// now, and saves it; on a conflict it starts again from the new State. It
// returns the State saved and the events the step recorded, which it has
// logged and counted.
func (t *trustManager) mutate(ctx context.Context, step func(st *trust.State, ev trust.Evidence) error) (*trust.State, []trust.Event, error) {
	for range maxSaveAttempts {
		st, err := t.coord.Store().Load(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("load the trust state: %w", err)
		}
		if err := t.wentBack(st); err != nil {
			return nil, nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		last := lastEvent(st)
		if err := step(st, t.evidence(ctx, st)); err != nil {
			return nil, nil, err
		}
		switch err := t.coord.Store().Save(ctx, st); {
		case errors.Is(err, trust.ErrConflict):
			t.m.conflicts.Inc()
			continue
		case err != nil:
			return nil, nil, fmt.Errorf("save the trust state: %w", err)
		}
		events := newEvents(st, last)
		t.audit(events)
		t.installSaved(st)
		return st, events, nil
	}
	return nil, nil, fmt.Errorf("the trust state changed under every one of %d attempts; try again", maxSaveAttempts)
}

// audit logs and counts each event: every change of the trust lifecycle
// is in the log with who, what and when, a forced one as a warning.
func (t *trustManager) audit(events []trust.Event) {
	for _, e := range events {
		level := slog.LevelInfo
		if e.Forced {
			level = slog.LevelWarn
		}
		t.log.Log(context.Background(), level, "trust lifecycle: "+e.Action, "who", e.Who, "authority", e.Authority,
			"detail", e.Detail, "forced", e.Forced, "at", e.At.UTC().Format(time.RFC3339))
		t.m.events.WithLabelValues(e.Action, fmt.Sprint(e.Forced)).Inc()
	}
}

// lastEvent is the newest event of st, to find the ones a step adds.
func lastEvent(st *trust.State) *trust.Event {
	if len(st.Events) == 0 {
		return nil
	}
	e := st.Events[len(st.Events)-1]
	return &e
}

// newEvents are the events of st after last (the newest before a step):
// found by value, since the oldest are dropped once there are MaxEvents.
func newEvents(st *trust.State, last *trust.Event) []trust.Event {
	if last == nil {
		return slices.Clone(st.Events)
	}
	for i := len(st.Events) - 1; i >= 0; i-- {
		if sameEvent(st.Events[i], *last) {
			return slices.Clone(st.Events[i+1:])
		}
	}
	return slices.Clone(st.Events)
}

func sameEvent(a, b trust.Event) bool {
	return a.At.Equal(b.At) && a.Who == b.Who && a.Action == b.Action && a.Authority == b.Authority && a.Detail == b.Detail && a.Forced == b.Forced
}

// newTrustManager returns the manager of p's rotating authority, or nil
// when the CA was given by the embedder (no lifecycle).
func newTrustManager(cfg Config, p parts, srv *server.Server, iss *issuer.Server) *trustManager {
	auth, ok := p.ca.(*rotatingAuthority)
	if !ok || p.coord == nil {
		return nil
	}
	td := p.src.td.String()
	store := p.store
	t := &trustManager{coord: p.coord, auth: auth, proxies: srv.Proxies, reports: issuerReports(iss), issuedTo: iss.IssuedTo,
		setEpoch: srv.SetRevocationEpoch,
		nodesOf: func(id string) []string {
			var out []string
			for _, w := range store.Snapshot().Workloads() {
				if w.Identity(td).String() == id {
					out = append(out, w.Key())
				}
			}
			return out
		},
		mint: func(now time.Time) func(string, *trust.Authority) (*trust.Authority, error) {
			return trust.DefaultMint(cfg.RootTTL, cfg.IntermediateTTL, now)
		},
		log: cfg.Logger.With("component", "trust"), m: newTrustMetrics(p.reg), now: time.Now, poll: trustPoll,
		kicks: make(chan struct{}, 1), started: time.Now(), warmup: cfg.EvidenceWarmup}
	if t.warmup <= 0 {
		t.warm = true
	}
	if rk, ok := p.coord.(RosterKeeper); ok {
		t.roster = rk
		nodes, known, err := rk.Roster()
		if err != nil {
			// Unknown, then: the warm-up runs its whole length.
			t.log.Warn("the roster of the proxies connected before cannot be read; gates wait the whole warm-up", "err", err, "warmup", t.warmup)
		}
		t.expected, t.known = nodes, known && err == nil
		if t.known && len(t.expected) == 0 {
			t.warm = true // no proxy was connected before: none to wait for
		}
	}
	if !t.warm {
		t.log.Info("trust evidence warming up: gates wait for the proxies connected before the start", "known", t.known,
			"proxies", len(t.expected), "at_most", t.warmup)
	}
	p.reg.MustRegister(trustCollector{t})
	// Before the ADS server runs: proxies reconnecting after a restart
	// get what they hold, and nothing is drained again.
	t.epoch = auth.State().RevocationEpoch
	t.setEpoch(t.epoch)
	return t
}

// handEpoch gives the ADS server the State's revocation epoch when it
// moved since the last one handed: the loop reloads every second, and an
// epoch set otherwise (a test, an embedder) is not overwritten with the
// same stored value each time.
func (t *trustManager) handEpoch(e uint64) {
	t.mu.Lock()
	moved := e != t.epoch
	t.epoch = e
	t.mu.Unlock()
	if moved {
		t.setEpoch(e)
	}
}

// kick wakes the trust loop now (a rotation just started), instead of at
// its next tick.
func (t *trustManager) kick() {
	select {
	case t.kicks <- struct{}{}:
	default:
	}
}

// issuerReports reads the agents' bundle reports from the issuer: those
// of open streams, and for a while those of streams just ended (an agent
// reconnecting keeps its place; issuer.ReportGrace).
func issuerReports(iss *issuer.Server) func() []bundleReport {
	return func() []bundleReport {
		rs := iss.BundleReports()
		out := make([]bundleReport, 0, len(rs))
		for _, r := range rs {
			out = append(out, bundleReport{Workload: r.Workload, AgentSeq: r.AgentSeq, ProxySeq: r.ProxySeq, Leaf: r.Leaf})
		}
		return out
	}
}
