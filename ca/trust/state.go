package trust

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// New returns a fresh state of trust domain td in which a is the active
// authority, at Sequence 1: what `bulwark ca init` stores, and what a CA
// directory from before this package migrates to. The state is not yet
// stored (Revision 0).
func New(td spiffeid.TrustDomain, a *Authority, op Operation) *State {
	op = opNow(op)
	a.Phase = Active
	a.PreparedSeq = 1
	a.PreparedAt, a.ActivatedAt = op.Now, op.Now
	s := &State{TrustDomain: td, Sequence: 1, Authorities: []*Authority{a}}
	action := "init"
	if a.Origin == "legacy" {
		action = "migrate"
	}
	// No bump: the first state is sequence 1, whatever built it. A
	// signer that cannot sign the CRL (a failing HSM) leaves it empty:
	// the next change of the state tries again.
	_ = s.rebuildCRLs(op.Now)
	s.event(op, action, a.ID, fmt.Sprintf("authority %s active (%s), root %q", a.ID, a.Origin, a.Root.Subject.CommonName), false)
	return s
}

// Active returns the authority that signs now, or nil if there is none
// (only in a state that failed validation).
func (s *State) Active() *Authority {
	for _, a := range s.Authorities {
		if a.Phase == Active {
			return a
		}
	}
	return nil
}

// Get returns the authority with the ID, or the only one whose ID begins
// with it when at least 4 hex digits are given; nil if none or more than
// one.
func (s *State) Get(id string) *Authority {
	a, err := s.lookup(id)
	if err != nil {
		return nil
	}
	return a
}

// minPrefix is the shortest ID prefix that selects an authority.
const minPrefix = 4

// lookup is Get with the reason it found nothing.
func (s *State) lookup(id string) (*Authority, error) {
	id = strings.ToLower(strings.TrimSpace(id))
	for _, a := range s.Authorities {
		if a.ID == id {
			return a, nil
		}
	}
	if len(id) < minPrefix || !isHex(id) {
		return nil, fmt.Errorf("%w: %s (give the ID, or at least %d of its hex digits)", ErrNotFound, bounded.Quote(id, bounded.Name), minPrefix)
	}
	var found []*Authority
	for _, a := range s.Authorities {
		if strings.HasPrefix(a.ID, id) {
			found = append(found, a)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: %s", ErrNotFound, bounded.Quote(id, bounded.Name))
	case 1:
		return found[0], nil
	default:
		ids := make([]string, len(found))
		for i, a := range found {
			ids[i] = a.ID
		}
		return nil, fmt.Errorf("%w: %q is the beginning of %s; give more digits", ErrAmbiguous, id, strings.Join(ids, ", "))
	}
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s != ""
}

// Bundle returns what every workload and proxy is handed now. The
// certificates and CRLs are shared with the state; do not modify them.
func (s *State) Bundle() Bundle {
	b := Bundle{TrustDomain: s.TrustDomain, Sequence: s.Sequence, ReissueWithin: DefaultReissueWithin}
	for _, a := range s.Authorities {
		if a.Phase == Removed {
			continue
		}
		if !containsCert(b.Roots, a.Root) {
			b.Roots = append(b.Roots, a.Root)
		}
		if !a.Revoked && len(a.CRL) > 0 {
			b.CRLs = append(b.CRLs, a.CRL)
		}
	}
	if act := s.Active(); act != nil {
		b.Signing = act.Signing()
	}
	return b
}

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// IssuerOf returns the ID of the authority whose signing certificate
// signed leaf (any phase, removed ones too), or "" if none did.
func (s *State) IssuerOf(leaf *x509.Certificate) string {
	if leaf == nil {
		return ""
	}
	for _, a := range s.Authorities {
		signing := a.Signing()
		// The key identifiers pick the candidate cheaply; the signature
		// decides. A leaf without an authority key identifier is matched
		// by issuer name instead.
		if len(leaf.AuthorityKeyId) > 0 {
			if !bytes.Equal(leaf.AuthorityKeyId, signing.SubjectKeyId) {
				continue
			}
		} else if !bytes.Equal(leaf.RawIssuer, signing.RawSubject) {
			continue
		}
		if leaf.CheckSignatureFrom(signing) == nil {
			return a.ID
		}
	}
	return ""
}

// CA returns the active authority as a package-ca CA: cfg with its
// TrustDomain, Roots (Bundle().Roots), Chain and Signer filled in.
func (s *State) CA(cfg ca.Config) (*ca.CA, error) {
	act := s.Active()
	if act == nil {
		return nil, fmt.Errorf("%w: no authority of trust domain %s is active", ErrInvalid, s.TrustDomain)
	}
	cfg.TrustDomain = s.TrustDomain
	cfg.Roots = s.Bundle().Roots
	cfg.Chain = act.Chain
	cfg.Signer = act.Key
	c, err := ca.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("trust: authority %s: %w", act.ID, err)
	}
	return c, nil
}

// opNow fills in a zero Operation.Now with the clock: the functions of
// the package are pure when the caller passes the time, as it should.
func opNow(op Operation) Operation {
	if op.Now.IsZero() {
		op.Now = time.Now()
	}
	return op
}

// event appends an audit event, keeping the latest MaxEvents.
func (s *State) event(op Operation, action, authority, detail string, forced bool) {
	s.Events = append(s.Events, Event{
		At: op.Now, Who: bounded.Text(op.Who, bounded.Name), Action: action, Authority: authority,
		Detail: bounded.Text(detail, bounded.Message), Forced: forced,
	})
	if n := len(s.Events) - MaxEvents; n > 0 {
		s.Events = append([]Event(nil), s.Events[n:]...)
	}
}

// commit finishes a mutation: a new bundle sequence, CRLs numbered with
// it, and the audit event.
func (s *State) commit(op Operation, action, authority, detail string, forced bool) error {
	s.Sequence++
	if err := s.rebuildCRLs(op.Now); err != nil {
		return err
	}
	s.event(op, action, authority, detail, forced)
	return nil
}

// apply runs a mutation on a copy of s and keeps the copy only if it
// succeeds: a refused or failed step leaves s as it was, so a caller can
// go on with it (or save it) without reloading.
func (s *State) apply(f func(c *State) error) error {
	c := s.clone()
	if err := f(c); err != nil {
		return err
	}
	*s = *c
	return nil
}

// clone copies everything a mutation may change; certificates, keys and
// DER are shared, since nothing changes them in place.
func (s *State) clone() *State {
	c := *s
	c.Authorities = make([]*Authority, len(s.Authorities))
	for i, a := range s.Authorities {
		x := *a
		c.Authorities[i] = &x
	}
	c.Revocations = make([]Revocation, len(s.Revocations))
	for i, r := range s.Revocations {
		r.Serials = append([]string(nil), r.Serials...)
		r.Leaves = append([]LeafInfo(nil), r.Leaves...)
		c.Revocations[i] = r
	}
	c.ImportedCRLs = append([]ImportedCRL(nil), s.ImportedCRLs...)
	c.Events = append([]Event(nil), s.Events...)
	if s.Rotation != nil {
		r := *s.Rotation
		c.Rotation = &r
	}
	return &c
}
