package trust

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// Steps of a rotation, in order.
const (
	StepPrepare  = "prepare"  // mint the new authority and prepare it
	StepActivate = "activate" // activate it (gate: every proxy holds it)
	StepReissue  = "reissue"  // wait until no workload presents a leaf of the old one
	StepRemove   = "remove"   // remove the old one (same gate)
	StepConfirm  = "confirm"  // wait until every proxy holds a bundle without it
	StepDone     = "done"
)

// RenewalMargin is the least time before its expiry at which an
// intermediate is renewed (a sixth of its lifetime when that is longer),
// and from when a plug-in CA's operator is warned.
const RenewalMargin = 30 * 24 * time.Hour

// StartRotation records a rotation of the active authority, of kind
// "root" (a new root and intermediate: always possible, since it mints
// its own root) or "intermediate" (a new intermediate under the same
// root: only when the root key is held). Advance then drives it. Refused
// while another rotation is in progress. op.Force makes every gate of the
// rotation forced (recorded at each step).
func StartRotation(s *State, kind string, op Operation) error {
	op = opNow(op)
	act, err := s.rotationStart()
	if err != nil {
		return err
	}
	switch kind {
	case "root":
	case "intermediate":
		if act.RootKey == nil {
			return fmt.Errorf("%w: rotate intermediate: the root key of authority %s is not held, so no intermediate can be minted under its root; hand in the next intermediate instead (bulwark ca prepare --cert ... --key ...)", ErrIllegal, act.ID)
		}
	default:
		return fmt.Errorf("%w: rotate: kind %s is neither root nor intermediate", ErrInvalid, bounded.Quote(kind, bounded.Name))
	}
	return s.apply(func(c *State) error {
		c.Rotation = &Rotation{Kind: kind, Old: act.ID, Step: StepPrepare, StartedAt: op.Now,
			By: bounded.Text(op.Who, bounded.Name), Reason: bounded.Text(op.Reason, bounded.Name), Force: op.Force}
		return c.commit(op, "rotate", act.ID, fmt.Sprintf("%s rotation of %s started%s", kind, act.ID, reasonNote(op)), false)
	})
}

// StartRotationTo records a rotation from the active authority to target,
// an authority already prepared (handed in by an operator): Advance then
// drives it from the activate step, gate by gate, minting nothing. Its
// kind is "root" when target has another root, else "intermediate".
func StartRotationTo(s *State, target string, op Operation) error {
	op = opNow(op)
	act, err := s.rotationStart()
	if err != nil {
		return err
	}
	t, err := s.lookup(target)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	if t.Phase != Prepared || t.Revoked {
		return fmt.Errorf("%w: rotate to %s: it is %s%s, not prepared", ErrIllegal, t.ID, t.Phase, map[bool]string{true: " and revoked"}[t.Revoked])
	}
	kind := "intermediate"
	if !t.Root.Equal(act.Root) {
		kind = "root"
	}
	return s.apply(func(c *State) error {
		c.Rotation = &Rotation{Kind: kind, Old: act.ID, Target: t.ID, Step: StepActivate, StartedAt: op.Now,
			By: bounded.Text(op.Who, bounded.Name), Reason: bounded.Text(op.Reason, bounded.Name), Force: op.Force}
		return c.commit(op, "rotate", act.ID, fmt.Sprintf("%s rotation of %s to %s started%s", kind, act.ID, t.ID, reasonNote(op)), false)
	})
}

func (s *State) rotationStart() (*Authority, error) {
	if r := s.Rotation; r != nil {
		return nil, fmt.Errorf("%w: rotate: a %s rotation of %s is in progress (step %s, started %s by %s); let it finish or cancel it",
			ErrIllegal, r.Kind, r.Old, r.Step, r.StartedAt.UTC().Format(time.RFC3339), r.By)
	}
	act := s.Active()
	if act == nil {
		return nil, fmt.Errorf("%w: rotate: no authority is active", ErrIllegal)
	}
	return act, nil
}

func reasonNote(op Operation) string {
	if op.Reason == "" {
		return ""
	}
	return ": " + bounded.Text(op.Reason, bounded.Name)
}

// CancelRotation forgets the rotation in progress. What it already did
// stays done: a prepared target stays prepared (remove it to abandon it),
// an activated one stays active.
func CancelRotation(s *State, op Operation) error {
	op = opNow(op)
	if s.Rotation == nil {
		return fmt.Errorf("%w: no rotation is in progress", ErrIllegal)
	}
	r := *s.Rotation
	return s.apply(func(c *State) error {
		c.Rotation = nil
		return c.commit(op, "rotate", r.Old, fmt.Sprintf("%s rotation of %s cancelled at step %s%s", r.Kind, r.Old, r.Step, reasonNote(op)), false)
	})
}

// Advance does at most the next step of the rotation in progress, and
// reports whether it changed s (to be saved then; call again until it
// changes nothing). A step waiting on a gate returns its *GateError with
// changed false; Rotation.Force or op.Force overrides it (recorded).
//
// The steps: prepare (mint calls to make the new authority, which is
// prepared and recorded as Target: a rotation whose Target is set never
// mints again, so a driver restarted from the stored state resumes
// instead of minting a second authority), activate (Activate's gate),
// reissue (no connected workload presents a leaf the old authority
// signed), remove (Remove's gate), confirm (every proxy has acknowledged
// the bundle without the old authority), then the rotation is cleared.
// With no rotation in progress it returns false, nil.
func Advance(s *State, ev Evidence, op Operation, mint func(kind string, old *Authority) (*Authority, error)) (changed bool, err error) {
	op = opNow(op)
	if s.Rotation == nil {
		return false, nil
	}
	op.Force = op.Force || s.Rotation.Force
	err = s.apply(func(c *State) error { return c.advance(ev, op, mint) })
	if err != nil {
		return false, err
	}
	return true, nil
}

func (s *State) advance(ev Evidence, op Operation, mint func(kind string, old *Authority) (*Authority, error)) error {
	r := s.Rotation
	switch r.Step {
	case StepPrepare:
		if r.Target == "" {
			old := s.Get(r.Old)
			if old == nil {
				return fmt.Errorf("%w: rotation: the old authority %s is gone; cancel the rotation", ErrIllegal, r.Old)
			}
			if mint == nil {
				return fmt.Errorf("%w: rotation: nothing to mint the new authority with", ErrInvalid)
			}
			a, err := mint(r.Kind, old)
			if err != nil {
				return fmt.Errorf("rotation: mint %s: %w", r.Kind, err)
			}
			if err := s.prepare(a, op); err != nil {
				return fmt.Errorf("rotation: %w", err)
			}
			r.Target = a.ID
			r.Step = StepActivate
			return nil
		}
		r.Step = StepActivate
		return s.commit(op, "rotate", r.Target, fmt.Sprintf("%s is prepared already", r.Target), false)
	case StepActivate:
		t := s.Get(r.Target)
		switch {
		case t == nil:
			return fmt.Errorf("%w: rotation: its target %s is gone; cancel the rotation", ErrIllegal, r.Target)
		case t.Phase == Active:
			// Activated by hand meanwhile: the step is done.
			r.Step = StepReissue
			return s.commit(op, "rotate", t.ID, fmt.Sprintf("%s is active already", t.ID), false)
		case t.Phase != Prepared || t.Revoked:
			return fmt.Errorf("%w: rotation: its target %s is %s%s; cancel the rotation", ErrIllegal, t.ID, t.Phase,
				map[bool]string{true: " and revoked"}[t.Revoked])
		}
		if err := s.activate(t, ev, op, "activate", fmt.Sprintf("%s rotation", r.Kind)); err != nil {
			return err
		}
		r.Step = StepReissue
		return nil
	case StepReissue:
		forced, detail := false, ""
		if g := leafGate(StepReissue, r.Old, ev, "workloads still present leaves the old authority signed",
			fmt.Sprintf("removing %s next cuts off the workloads that still present its leaves, until they are re-issued", r.Old)); g != nil {
			if !op.Force {
				return g
			}
			forced, detail = true, "; forced: "+forcedDetail(g)
		}
		r.Step = StepRemove
		return s.commit(op, "rotate", r.Target, fmt.Sprintf("every workload presents a leaf of %s%s", r.Target, detail), forced)
	case StepRemove:
		old := s.Get(r.Old)
		switch {
		case old == nil:
			return fmt.Errorf("%w: rotation: the old authority %s is gone; cancel the rotation", ErrIllegal, r.Old)
		case old.Phase == Removed:
			// Removed by hand meanwhile.
			if err := s.commit(op, "rotate", old.ID, fmt.Sprintf("%s is removed already", old.ID), false); err != nil {
				return err
			}
		default:
			if err := s.remove(old, ev, op); err != nil {
				return err
			}
		}
		r.Step = StepConfirm
		r.ConfirmSeq = s.Sequence
		return nil
	case StepConfirm:
		var lag []string
		for _, p := range ev.Proxies {
			seq := p.ProxySeq
			if !p.Reported {
				seq = 0
			}
			if seq < r.ConfirmSeq {
				lag = append(lag, fmt.Sprintf("%s (holds bundle %d, needs %d)", nodeName(p), seq, r.ConfirmSeq))
			}
		}
		forced, detail := false, ""
		if g := gate(StepConfirm, r.Old, lag, ev.Missing, fmt.Sprintf("not every proxy holds bundle %d, the first without %s", r.ConfirmSeq, r.Old),
			"nothing at once: the rotation is recorded as done while some proxies still trust the old authority"); g != nil {
			if !op.Force {
				return g
			}
			forced, detail = true, "; forced: "+forcedDetail(g)
		}
		s.Rotation = nil
		return s.commit(op, "rotate", r.Target, fmt.Sprintf("%s rotation done: %s replaced by %s%s", r.Kind, r.Old, r.Target, detail), forced)
	case StepDone:
		s.Rotation = nil
		return s.commit(op, "rotate", r.Target, fmt.Sprintf("%s rotation done: %s replaced by %s", r.Kind, r.Old, r.Target), false)
	default:
		return fmt.Errorf("%w: rotation: unknown step %s; cancel the rotation", ErrInvalid, bounded.Quote(r.Step, bounded.Name))
	}
}

// HandIn prepares an operator's next authority (a plug-in CA's new
// intermediate): chain (signing certificate first) and its key, under
// root, or under the active authority's root when root is nil. When
// Bulwark holds that root's key (another authority has it), the new
// authority gets it too. It is checked as NewAuthority does, at op.Now.
func HandIn(s *State, root *x509.Certificate, chain []*x509.Certificate, key crypto.Signer, op Operation) (*Authority, error) {
	op = opNow(op)
	if root == nil {
		act := s.Active()
		if act == nil {
			return nil, fmt.Errorf("%w: hand in: no authority is active, so the root must be given", ErrInvalid)
		}
		root = act.Root
	}
	var rootKey crypto.Signer
	for _, a := range s.Authorities {
		if a.RootKey != nil && a.Root.Equal(root) {
			rootKey = a.RootKey
		}
	}
	a, err := newAuthority(root, rootKey, chain, key, "handed-in", op.Now)
	if err != nil {
		return nil, fmt.Errorf("hand in: %w", err)
	}
	if err := Prepare(s, a, op); err != nil {
		return nil, err
	}
	return s.Get(a.ID), nil
}

// RenewalDue says whether the active authority's signing certificate
// needs renewing at now: due when less than max(30 days, a sixth of its
// lifetime) is left and the root key is held (an intermediate rotation
// does it), warn when it cannot be renewed automatically and expires
// within 30 days (no root key: the operator hands in the next one; or the
// root itself expires within the margin, which an intermediate cannot
// outlive). why says which, for the log. Not due while a rotation is in
// progress.
func RenewalDue(s *State, now time.Time) (due bool, warn bool, why string) {
	act := s.Active()
	if act == nil {
		return false, false, ""
	}
	signing := act.Signing()
	left := signing.NotAfter.Sub(now)
	margin := max(RenewalMargin, signing.NotAfter.Sub(signing.NotBefore)/6)
	exp := signing.NotAfter.UTC().Format(time.RFC3339)
	switch {
	case left >= margin:
		return false, false, ""
	case act.RootKey == nil:
		if left < RenewalMargin {
			return false, true, fmt.Sprintf("the signing certificate of authority %s expires at %s and the root key is not held: hand in the next intermediate", act.ID, exp)
		}
		return false, false, ""
	case act.Root.NotAfter.Sub(now) < margin:
		if left < RenewalMargin {
			return false, true, fmt.Sprintf("the signing certificate of authority %s expires at %s and its root at %s, which a new intermediate cannot outlive: rotate the root", act.ID, exp, act.Root.NotAfter.UTC().Format(time.RFC3339))
		}
		return false, false, ""
	case s.Rotation != nil:
		return false, false, fmt.Sprintf("the signing certificate of authority %s expires at %s; a %s rotation is in progress", act.ID, exp, s.Rotation.Kind)
	default:
		return true, false, fmt.Sprintf("the signing certificate of authority %s expires at %s, within %s", act.ID, exp, margin.Round(time.Hour))
	}
}
