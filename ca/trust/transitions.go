package trust

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// maxLaggardsShown bounds the laggards a GateError's message names; the
// Laggards field keeps them all.
const maxLaggardsShown = 20

// Error says which step was refused, why, who holds it up, and what
// --force would break.
func (e *GateError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "trust: %s %s refused: %s", e.Step, e.Authority, e.Why)
	if len(e.Laggards) > 0 {
		shown := e.Laggards[:min(len(e.Laggards), maxLaggardsShown)]
		b.WriteString(": ")
		b.WriteString(strings.Join(shown, "; "))
		if more := len(e.Laggards) - len(shown); more > 0 {
			fmt.Fprintf(&b, "; and %d more", more)
		}
	}
	if e.Breaks != "" {
		fmt.Fprintf(&b, " (--force overrides this and breaks: %s)", e.Breaks)
	}
	return b.String()
}

// Prepare adds a (from NewAuthority, HandIn or a mint function) to s as
// prepared: its root and CRL join the bundle at the next sequence, which
// is recorded as a.PreparedSeq; nothing is signed with it yet. a must be
// new to s and of s's trust domain.
func Prepare(s *State, a *Authority, op Operation) error {
	op = opNow(op)
	return s.apply(func(c *State) error { return c.prepare(a, op) })
}

// prepare is Prepare on the state itself (within apply).
func (s *State) prepare(a *Authority, op Operation) error {
	if a == nil || a.Root == nil || len(a.Chain) == 0 || a.Key == nil {
		return fmt.Errorf("%w: prepare: an authority needs a root, a chain and a key", ErrInvalid)
	}
	if a.Phase != "" && a.Phase != Prepared {
		return fmt.Errorf("%w: prepare %s: it is %s already", ErrIllegal, a.ID, a.Phase)
	}
	if a.ID == "" {
		a.ID = authorityID(a.Signing())
	}
	if err := a.check(); err != nil {
		return err
	}
	if err := namesOnly(s.TrustDomain, append(slices.Clone(a.Chain), a.Root)...); err != nil {
		return fmt.Errorf("prepare %s: %w", a.ID, err)
	}
	if old := s.Get(a.ID); old != nil && old.ID == a.ID {
		return fmt.Errorf("%w: prepare %s: the authority is %s already", ErrIllegal, a.ID, old.Phase)
	}
	if a.Revoked {
		return fmt.Errorf("%w: prepare %s: it is revoked", ErrIllegal, a.ID)
	}
	if !op.Now.Before(a.Signing().NotAfter) {
		return fmt.Errorf("%w: prepare %s: its signing certificate expired at %s", ErrIllegal, a.ID, a.Signing().NotAfter.UTC().Format(time.RFC3339))
	}
	x := *a
	x.Phase = Prepared
	x.PreparedSeq = s.Sequence + 1
	x.PreparedAt = op.Now
	s.Authorities = append(s.Authorities, &x)
	if err := s.commit(op, "prepare", x.ID, fmt.Sprintf("authority %s prepared (%s), root %q, signing certificate valid until %s",
		x.ID, x.Origin, x.Root.Subject.CommonName, x.Signing().NotAfter.UTC().Format(time.RFC3339)), false); err != nil {
		return err
	}
	*a = x
	return nil
}

// Activate makes the prepared authority id (or an ID prefix) the one that
// signs, and retires the one that signed until now, in the same step.
// Gate: every proxy has acknowledged, and its agent holds, a bundle
// carrying the authority (sequence >= its PreparedSeq), and no evidence
// is missing; otherwise a *GateError naming the laggards, which
// op.Force overrides (the event records it).
func Activate(s *State, id string, ev Evidence, op Operation) error {
	op = opNow(op)
	a, err := s.lookup(id)
	if err != nil {
		return fmt.Errorf("activate: %w", err)
	}
	return s.apply(func(c *State) error { return c.activate(c.Get(a.ID), ev, op, "activate", "") })
}

// activate is Activate on the state itself (within apply). action and
// note go to the event.
func (s *State) activate(a *Authority, ev Evidence, op Operation, action, note string) error {
	switch {
	case a.Phase == Active:
		return fmt.Errorf("%w: activate %s: it is active already", ErrIllegal, a.ID)
	case a.Phase == Retired:
		return fmt.Errorf("%w: activate %s: it is retired, and a retired authority does not sign again; prepare a new one", ErrIllegal, a.ID)
	case a.Phase == Removed:
		return fmt.Errorf("%w: activate %s: it is removed; prepare a new one", ErrIllegal, a.ID)
	case a.Phase != Prepared:
		return fmt.Errorf("%w: activate %s: it is not prepared (phase %q)", ErrIllegal, a.ID, a.Phase)
	case a.Revoked:
		return fmt.Errorf("%w: activate %s: it is revoked", ErrIllegal, a.ID)
	case !op.Now.Before(a.Signing().NotAfter) || op.Now.Before(a.Signing().NotBefore):
		return fmt.Errorf("%w: activate %s: its signing certificate is valid from %s to %s, not now", ErrIllegal, a.ID,
			a.Signing().NotBefore.UTC().Format(time.RFC3339), a.Signing().NotAfter.UTC().Format(time.RFC3339))
	}
	forced, detail := false, ""
	if g := activateGate(a, ev); g != nil {
		if !op.Force {
			return g
		}
		forced, detail = true, forcedDetail(g)
	}
	old := s.Active()
	if old != nil {
		old.Phase = Retired
		old.RetiredAt = op.Now
	}
	a.Phase = Active
	a.ActivatedAt = op.Now
	msg := fmt.Sprintf("authority %s signs now", a.ID)
	if old != nil {
		msg += fmt.Sprintf("; %s retired", old.ID)
	}
	if note != "" {
		msg += "; " + note
	}
	if forced {
		msg += "; forced: " + detail
	}
	return s.commit(op, action, a.ID, msg, forced)
}

// forcedDetail is the event detail of a forced step: what it breaks, and
// whom.
func forcedDetail(g *GateError) string {
	d := g.Breaks
	if n := len(g.Laggards); n > 0 {
		d += fmt.Sprintf(" (%d laggards, first %s)", n, g.Laggards[0])
	}
	return d
}

// activateGate refuses activating a unless every proxy and its agent
// hold a bundle that carries it.
func activateGate(a *Authority, ev Evidence) *GateError {
	need := a.PreparedSeq
	var lag []string
	for _, p := range ev.Proxies {
		proxy, agent := p.ProxySeq, p.AgentSeq
		if !p.Reported {
			proxy, agent = 0, 0
		}
		if proxy >= need && agent >= need {
			continue
		}
		switch {
		case !p.Reported:
			lag = append(lag, fmt.Sprintf("%s (has reported no bundle, needs %d)", nodeName(p), need))
		case proxy != agent:
			lag = append(lag, fmt.Sprintf("%s (holds bundle %d, its agent %d, needs %d)", nodeName(p), proxy, agent, need))
		default:
			lag = append(lag, fmt.Sprintf("%s (holds bundle %d, needs %d)", nodeName(p), proxy, need))
		}
	}
	return gate("activate", a.ID, lag, ev.Missing,
		fmt.Sprintf("not every proxy holds bundle %d, the first that carries the authority", need),
		"proxies without the new authority's root refuse the leaves it signs: connections between re-issued workloads and the laggards fail until the laggards catch up")
}

// leafGate refuses a step while a connected workload presents a leaf
// that authority id signed.
func leafGate(step, id string, ev Evidence, why, breaks string) *GateError {
	var lag []string
	for _, p := range ev.Proxies {
		for _, l := range p.Leaves {
			if l.Issuer == id {
				lag = append(lag, fmt.Sprintf("%s: leaf %s signed by %s", nodeName(p), shortSerial(l.Serial), id))
			}
		}
	}
	return gate(step, id, lag, ev.Missing, why, breaks)
}

// gate makes the GateError of a step, or nil when nothing holds it up.
// Missing evidence is a laggard too: the proxies it would vouch for are
// unknown.
func gate(step, id string, lag, missing []string, why, breaks string) *GateError {
	if len(lag) == 0 && len(missing) == 0 {
		return nil
	}
	slices.Sort(lag)
	for _, m := range missing {
		lag = append(lag, fmt.Sprintf("evidence from %s is missing or stale", bounded.Text(m, bounded.Name)))
	}
	if len(missing) > 0 && len(lag) == len(missing) {
		why = "evidence is missing, so the proxies it would vouch for are unknown"
	}
	return &GateError{Step: step, Authority: id, Why: why, Laggards: lag, Breaks: breaks}
}

func nodeName(p ProxyAck) string {
	n := bounded.Text(p.Node, bounded.Name)
	if p.Replica != "" {
		n += " via " + bounded.Text(p.Replica, bounded.Name)
	}
	return n
}

func shortSerial(sn string) string {
	sn = bounded.Text(sn, 40)
	if len(sn) > 8 {
		return sn[:8] + ".."
	}
	return sn
}

// Retire stops id from being trusted for signing. An active authority
// hands over to its newest prepared successor, through Activate's gate;
// with none prepared the step is refused (prepare one first). Prepared,
// retired or removed authorities have nothing to retire.
func Retire(s *State, id string, ev Evidence, op Operation) error {
	op = opNow(op)
	a, err := s.lookup(id)
	if err != nil {
		return fmt.Errorf("retire: %w", err)
	}
	switch a.Phase {
	case Active:
	case Prepared:
		return fmt.Errorf("%w: retire %s: it is prepared and never signed; remove it to abandon it", ErrIllegal, a.ID)
	default:
		return fmt.Errorf("%w: retire %s: it is %s already", ErrIllegal, a.ID, a.Phase)
	}
	next := s.successor(a.ID)
	if next == nil {
		return fmt.Errorf("%w: retire %s: it is the active authority and none is prepared to take over; prepare one first (bulwark ca prepare, or bulwark ca rotate)", ErrIllegal, a.ID)
	}
	return s.apply(func(c *State) error {
		return c.activate(c.Get(next.ID), ev, op, "retire", fmt.Sprintf("retire %s", a.ID))
	})
}

// successor is the newest prepared, unrevoked authority other than id.
func (s *State) successor(id string) *Authority {
	var best *Authority
	for _, a := range s.Authorities {
		if a.ID == id || a.Phase != Prepared || a.Revoked {
			continue
		}
		if best == nil || a.PreparedSeq > best.PreparedSeq {
			best = a
		}
	}
	return best
}

// Remove takes id out of the bundle. A retired authority is removed once
// no connected workload presents a leaf it signed and no evidence is
// missing (*GateError otherwise; op.Force overrides); a prepared one that
// never signed is abandoned without a gate. The active one is never
// removed.
func Remove(s *State, id string, ev Evidence, op Operation) error {
	op = opNow(op)
	a, err := s.lookup(id)
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	return s.apply(func(c *State) error { return c.remove(c.Get(a.ID), ev, op) })
}

func (s *State) remove(a *Authority, ev Evidence, op Operation) error {
	forced, detail := false, ""
	switch a.Phase {
	case Active:
		return fmt.Errorf("%w: remove %s: it is the active authority; activate another first (or retire it)", ErrIllegal, a.ID)
	case Removed:
		return fmt.Errorf("%w: remove %s: it is removed already", ErrIllegal, a.ID)
	case Prepared:
		detail = "abandoned before it signed"
	case Retired:
		if g := leafGate("remove", a.ID, ev, "workloads still present leaves it signed",
			fmt.Sprintf("every proxy refuses the leaves %s signed: those workloads cannot connect, nor be connected to, until they are re-issued", a.ID)); g != nil {
			if !op.Force {
				return g
			}
			forced, detail = true, "forced: "+forcedDetail(g)
		}
	default:
		return fmt.Errorf("%w: remove %s: unknown phase %q", ErrIllegal, a.ID, a.Phase)
	}
	a.Phase = Removed
	a.RemovedAt = op.Now
	msg := fmt.Sprintf("authority %s removed", a.ID)
	if !s.rootTrusted(a) {
		msg += fmt.Sprintf("; root %q leaves the bundle", a.Root.Subject.CommonName)
	}
	if detail != "" {
		msg += "; " + detail
	}
	return s.commit(op, "remove", a.ID, msg, forced)
}

// rootTrusted reports whether another authority still in the bundle
// shares a's root.
func (s *State) rootTrusted(a *Authority) bool {
	for _, x := range s.Authorities {
		if x != a && x.Phase != Removed && x.Root.Equal(a.Root) {
			return true
		}
	}
	return false
}
