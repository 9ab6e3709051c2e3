package trust

import (
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DrainDeadline is how long a drain waits for every proxy to acknowledge
// the bundle that refuses the new certificates. A proxy that has not
// loaded it by then would let a drained connection back in through a
// fresh handshake, but waiting for it forever would keep every other
// proxy's connections open: past the deadline the drain goes ahead.
const DrainDeadline = 15 * time.Second

// refusals lists what the bundle refuses: each authority whose CRL is
// out of it, and each serial on an authority's CRL.
func (s *State) refusals() map[string]bool {
	out := map[string]bool{}
	for _, a := range s.Authorities {
		if a.Phase == Removed || a.Revoked {
			out["authority "+a.ID] = true
		}
	}
	for id, entries := range s.crlEntries() {
		for _, e := range entries {
			out["serial "+id+" "+e.SerialNumber.Text(16)] = true
		}
	}
	return out
}

// noteRefusals marks a drain as pending when s, the State a mutation
// produced from old, refuses anything old did not.
func (s *State) noteRefusals(old *State) {
	if s.Sequence == old.Sequence {
		return // nothing the bundle carries changed
	}
	before := old.refusals()
	for k := range s.refusals() {
		if !before[k] {
			s.DrainPending, s.DrainPendingAt = s.Sequence, time.Now()
			if len(s.Events) > 0 {
				s.DrainPendingAt = s.Events[len(s.Events)-1].At
			}
			return
		}
	}
}

// DrainDue reports whether the connections of newly refused certificates
// should be drained now: a drain is pending and every proxy in ev has
// acknowledged the bundle that refuses them (so a drained connection
// cannot come back through a proxy that still accepts it), or
// DrainDeadline has passed since the change.
func DrainDue(s *State, ev Evidence, now time.Time) bool {
	if s.DrainPending <= s.RevocationEpoch {
		return false
	}
	if !now.Before(s.DrainPendingAt.Add(DrainDeadline)) {
		return true
	}
	if len(ev.Missing) > 0 {
		return false
	}
	for _, p := range ev.Proxies {
		if s.refused(p) {
			// The revoked proxy itself: nothing of it is waited for (its
			// agent gets no bundle any more), its peers refuse it.
			continue
		}
		if !p.Reported || p.ProxySeq < s.DrainPending {
			return false
		}
	}
	return true
}

// refused reports whether the bundle refuses proxy p: its workload is
// revoked, or a leaf it presents is revoked or was signed by an authority
// out of the bundle.
func (s *State) refused(p ProxyAck) bool {
	if _, ok := s.Revoked("", spiffeid.ID{}, p.Node); ok {
		return true
	}
	for _, l := range p.Leaves {
		if _, ok := s.Revoked(l.Serial, spiffeid.ID{}, ""); ok {
			return true
		}
		if a := s.Get(l.Issuer); a != nil && (a.Phase == Removed || a.Revoked) {
			return true
		}
	}
	return false
}

// OrderDrain moves RevocationEpoch to the pending drain: every proxy then
// closes its established mutual TLS connections, and the new handshakes
// are checked against the CRLs they hold. The bundle does not change, so
// its sequence does not move.
func OrderDrain(s *State, op Operation) {
	op = opNow(op)
	if s.DrainPending <= s.RevocationEpoch {
		return
	}
	s.RevocationEpoch = s.DrainPending
	s.event(op, "drain", "", fmt.Sprintf("revocation epoch %d: every proxy closes its mutual TLS connections, so that a refused certificate keeps none", s.RevocationEpoch), false)
}
