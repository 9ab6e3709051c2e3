package trust

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/model"
)

// Bounds of revocations.
const (
	// MaxReason is the longest revocation reason accepted, in bytes.
	MaxReason = 256
	// MaxLeafLifetime is how long a leaf can live (ca.MaxLeafTTL): a
	// workload or ID entry lives at least this long after it is made,
	// since a certificate issued just before it stays valid that long,
	// and so does a serial entry whose certificate's expiry is unknown.
	MaxLeafLifetime = ca.MaxLeafTTL
	// maxLeavesPerEntry bounds the serials one entry records.
	maxLeavesPerEntry = 10_000
	// maxSerialDigits: RFC 5280 serials are at most 20 octets.
	maxSerialDigits = 40
)

// Revoke adds r to the revocation list. r.Kind and r.Value say what is
// revoked: BySerial (hex, colons allowed, up to 40 digits), ByWorkload
// (namespace/name) or ByID (a SPIFFE ID of s's trust domain); r.Reason is
// required (at most MaxReason bytes). r.Serials and r.Leaves, when the
// caller knows the certificates the entry covers, are recorded as by
// AddSerials. By and At come from op; Expires is computed: the latest
// NotAfter of the certificates it covers, and for workload and ID
// entries at least At + MaxLeafLifetime.
//
// The serial of an authority's signing certificate revokes that
// authority, as RevokeAuthority does with DefaultMint.
func Revoke(s *State, r Revocation, op Operation) error {
	op = opNow(op)
	value, err := s.normValue(r.Kind, r.Value)
	if err != nil {
		return err
	}
	reason, err := checkReason(r.Reason)
	if err != nil {
		return err
	}
	if r.Kind == BySerial {
		for _, a := range s.Authorities {
			if serialHex(a.Signing().SerialNumber) == value && a.Phase != Removed {
				return RevokeAuthority(s, a.ID, reason, DefaultMint(ca.DefaultRootTTL, ca.DefaultIntermediateTTL, op.Now), op)
			}
			if serialHex(a.Root.SerialNumber) == value && a.Phase != Removed {
				return fmt.Errorf("%w: revoke serial %s: it is the root of authority %s; replace the root instead (bulwark ca rotate --root)", ErrIllegal, value, a.ID)
			}
		}
	}
	if i := s.findRevocation(r.Kind, value); i >= 0 {
		x := s.Revocations[i]
		return fmt.Errorf("%w: revoke %s %s: revoked already, at %s by %s", ErrIllegal, r.Kind, value, x.At.UTC().Format(time.RFC3339), x.By)
	}
	entry := Revocation{Kind: r.Kind, Value: value, Reason: reason, By: bounded.Text(op.Who, bounded.Name), At: op.Now}
	if r.Kind == BySerial {
		entry.Serials = []string{value}
	}
	leaves := r.Leaves
	for _, sn := range r.Serials {
		leaves = append(leaves, LeafInfo{Serial: sn})
	}
	s.addLeaves(&entry, leaves, op.Now)
	entry.Expires = expires(entry)
	return s.apply(func(c *State) error {
		c.Revocations = append(c.Revocations, entry)
		return c.commit(op, "revoke", "", fmt.Sprintf("%s %s revoked (certificates known: %d): %s", entry.Kind, entry.Value, len(entry.Serials), reason), false)
	})
}

// AddSerials records more certificates an entry covers (a replica that
// sees a revoked workload's leaf learns its serial, issuer and expiry):
// their serials go on their issuers' CRLs and their expiry into Expires.
// It returns whether anything was new; false also when the entry does
// not exist. Leaves expired at op.Now are left out.
func AddSerials(s *State, kind RevocationKind, value string, leaves []LeafInfo, op Operation) bool {
	op = opNow(op)
	value, err := s.normValue(kind, value)
	if err != nil {
		return false
	}
	i := s.findRevocation(kind, value)
	if i < 0 {
		return false
	}
	err = s.apply(func(c *State) error {
		r := &c.Revocations[i]
		before := len(r.Leaves)
		if !c.addLeaves(r, leaves, op.Now) {
			return errUnchanged
		}
		r.Expires = expires(*r)
		return c.commit(op, "revoke", "", fmt.Sprintf("%s %s: %d more certificates known", kind, value, len(r.Leaves)-before), false)
	})
	return err == nil
}

var errUnchanged = fmt.Errorf("unchanged")

// addLeaves records leaves in r, skipping malformed and expired ones, and
// reports whether anything changed. An issuer that is no authority's ID
// is forgotten (the serial then goes on every CRL).
func (s *State) addLeaves(r *Revocation, leaves []LeafInfo, now time.Time) bool {
	changed := false
	for _, l := range leaves {
		sn, err := normSerial(l.Serial)
		if err != nil || (!l.NotAfter.IsZero() && l.NotAfter.Before(now)) {
			continue
		}
		issuer := ""
		if a := s.Get(l.Issuer); a != nil && a.ID == l.Issuer {
			issuer = a.ID
		}
		l = LeafInfo{Serial: sn, Issuer: issuer, NotAfter: l.NotAfter}
		if j := slices.IndexFunc(r.Leaves, func(x LeafInfo) bool { return x.Serial == sn }); j >= 0 {
			old := r.Leaves[j]
			if (old.Issuer == "" && issuer != "") || l.NotAfter.After(old.NotAfter) {
				if issuer == "" {
					l.Issuer = old.Issuer
				}
				if l.NotAfter.Before(old.NotAfter) {
					l.NotAfter = old.NotAfter
				}
				r.Leaves[j] = l
				changed = true
			}
			continue
		}
		if len(r.Leaves) >= maxLeavesPerEntry {
			break
		}
		r.Leaves = append(r.Leaves, l)
		if !slices.Contains(r.Serials, sn) {
			r.Serials = append(r.Serials, sn)
		}
		changed = true
	}
	return changed
}

// expires is when nothing r covers can be valid any more.
func expires(r Revocation) time.Time {
	var latest time.Time
	for _, l := range r.Leaves {
		if l.NotAfter.After(latest) {
			latest = l.NotAfter
		}
	}
	floor := r.At.Add(MaxLeafLifetime)
	if r.Kind == BySerial {
		// A serial entry covers one certificate: its expiry when known.
		for _, l := range r.Leaves {
			if l.Serial == r.Value && !l.NotAfter.IsZero() {
				return l.NotAfter
			}
		}
		return floor
	}
	if latest.After(floor) {
		return latest
	}
	return floor
}

// RevokeAuthority revokes authority id (or an ID prefix): its CRL leaves
// the bundle, so every proxy refuses every leaf it signed, even while
// its root stays trusted. When it is the active one, another takes over
// at once without the gate (forced, recorded): the newest prepared
// authority, or else, when its root key is held, a new intermediate that
// mint makes under the same root; without either it is refused, saying
// what to do. Workloads see the new signing authority in the bundle and
// re-issue.
func RevokeAuthority(s *State, id, reason string, mint func(kind string, old *Authority) (*Authority, error), op Operation) error {
	op = opNow(op)
	reason, err := checkReason(reason)
	if err != nil {
		return err
	}
	a, err := s.lookup(id)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	switch {
	case a.Phase == Removed:
		return fmt.Errorf("%w: revoke %s: it is removed, so nothing trusts it any more", ErrIllegal, a.ID)
	case a.Revoked:
		return fmt.Errorf("%w: revoke %s: revoked already, at %s", ErrIllegal, a.ID, a.RevokedAt.UTC().Format(time.RFC3339))
	}
	return s.apply(func(c *State) error {
		a := c.Get(a.ID)
		if a.Phase == Active {
			next := c.successor(a.ID)
			if next == nil {
				if a.RootKey == nil || mint == nil {
					return fmt.Errorf("%w: revoke %s: it is the active authority, none is prepared to take over, and the root key is not held to mint one; hand in the next intermediate (bulwark ca prepare), then revoke", ErrIllegal, a.ID)
				}
				n, err := mint("intermediate", a)
				if err != nil {
					return fmt.Errorf("revoke %s: mint its successor: %w", a.ID, err)
				}
				if err := c.prepare(n, op); err != nil {
					return fmt.Errorf("revoke %s: %w", a.ID, err)
				}
				next = c.Get(n.ID)
			}
			// The gate is not consulted: a revoked authority must stop
			// signing now, whoever lags.
			forced := op
			forced.Force = true
			skip := Evidence{Missing: []string{fmt.Sprintf("the gate (not consulted: %s is being revoked)", a.ID)}}
			if err := c.activate(next, skip, forced, "activate", fmt.Sprintf("%s is revoked", a.ID)); err != nil {
				return fmt.Errorf("revoke %s: %w", a.ID, err)
			}
		}
		a.Revoked = true
		a.RevokedAt = op.Now
		a.RevokedReason = reason
		return c.commit(op, "revoke", a.ID, fmt.Sprintf("authority %s revoked: %s; its CRL leaves the bundle, so every proxy refuses the leaves it signed", a.ID, reason), false)
	})
}

// Unrevoke drops the entry kind/value. The serial of a revoked
// authority's signing certificate un-revokes the authority: its CRL
// returns to the bundle.
func Unrevoke(s *State, kind RevocationKind, value string, op Operation) error {
	op = opNow(op)
	value, err := s.normValue(kind, value)
	if err != nil {
		return err
	}
	if i := s.findRevocation(kind, value); i >= 0 {
		return s.apply(func(c *State) error {
			c.Revocations = slices.Delete(c.Revocations, i, i+1)
			return c.commit(op, "unrevoke", "", fmt.Sprintf("%s %s unrevoked%s", kind, value, reasonNote(op)), false)
		})
	}
	if kind == BySerial {
		for _, a := range s.Authorities {
			if a.Revoked && a.Phase != Removed && serialHex(a.Signing().SerialNumber) == value {
				return s.apply(func(c *State) error {
					x := c.Get(a.ID)
					x.Revoked, x.RevokedAt, x.RevokedReason = false, time.Time{}, ""
					return c.commit(op, "unrevoke", x.ID, fmt.Sprintf("authority %s unrevoked; its CRL returns to the bundle%s", x.ID, reasonNote(op)), false)
				})
			}
		}
	}
	return fmt.Errorf("%w: unrevoke %s %s: not revoked", ErrInvalid, kind, value)
}

// Prune drops the entries that expired at now, and the certificates of
// the others that expired (their serials leave the CRLs). It reports
// whether anything changed.
func Prune(s *State, now time.Time) bool {
	changed := false
	err := s.apply(func(c *State) error {
		kept := c.Revocations[:0]
		dropped := 0
		for _, r := range c.Revocations {
			if !r.Expires.IsZero() && !now.Before(r.Expires) {
				dropped++
				continue
			}
			n := len(r.Leaves)
			r.Leaves = slices.DeleteFunc(r.Leaves, func(l LeafInfo) bool { return !l.NotAfter.IsZero() && !now.Before(l.NotAfter) })
			if len(r.Leaves) != n {
				changed = true
				r.Serials = slices.DeleteFunc(r.Serials, func(sn string) bool {
					return sn != r.Value && !slices.ContainsFunc(r.Leaves, func(l LeafInfo) bool { return l.Serial == sn })
				})
			}
			kept = append(kept, r)
		}
		c.Revocations = kept
		if dropped == 0 && !changed {
			return errUnchanged
		}
		changed = true
		return c.commit(Operation{Who: "prune", Now: now}, "prune", "", fmt.Sprintf("%d expired revocations dropped", dropped), false)
	})
	return err == nil && changed
}

// Revoked returns the entry that revokes a certificate with this serial
// (hex), SPIFFE ID or workload (namespace/name); empty arguments match
// nothing. For the issuer: no renewal, no first certificate.
func (s *State) Revoked(serial string, id spiffeid.ID, workload string) (Revocation, bool) {
	sn, _ := normSerial(serial)
	for _, r := range s.Revocations {
		switch {
		case sn != "" && (r.Kind == BySerial && r.Value == sn || slices.Contains(r.Serials, sn)):
		case r.Kind == ByID && !id.IsZero() && r.Value == id.String():
		case r.Kind == ByWorkload && workload != "" && r.Value == workload:
		default:
			continue
		}
		return r, true
	}
	return Revocation{}, false
}

func (s *State) findRevocation(kind RevocationKind, value string) int {
	return slices.IndexFunc(s.Revocations, func(r Revocation) bool { return r.Kind == kind && r.Value == value })
}

// normValue checks and normalises what a revocation names.
func (s *State) normValue(kind RevocationKind, value string) (string, error) {
	value = strings.TrimSpace(value)
	switch kind {
	case BySerial:
		sn, err := normSerial(value)
		if err != nil {
			return "", fmt.Errorf("%w: revocation: serial %s: %v", ErrInvalid, bounded.Quote(value, bounded.Name), err)
		}
		return sn, nil
	case ByWorkload:
		if _, _, ok := model.ParseNodeID(value); !ok {
			return "", fmt.Errorf("%w: revocation: workload %s is not namespace/name", ErrInvalid, bounded.Quote(value, bounded.Name))
		}
		return value, nil
	case ByID:
		id, err := spiffeid.FromString(value)
		if err != nil {
			return "", fmt.Errorf("%w: revocation: id %s: %v", ErrInvalid, bounded.Quote(value, bounded.Name), err)
		}
		if !id.MemberOf(s.TrustDomain) {
			return "", fmt.Errorf("%w: revocation: id %s is not in trust domain %s", ErrInvalid, id, s.TrustDomain)
		}
		if id.Path() == "" {
			return "", fmt.Errorf("%w: revocation: id %s names the trust domain, not a workload", ErrInvalid, id)
		}
		return id.String(), nil
	default:
		return "", fmt.Errorf("%w: revocation: kind %s (want serial, workload or id)", ErrInvalid, bounded.Quote(string(kind), bounded.Name))
	}
}

// normSerial returns a serial as the package writes it: lower-case hex
// without leading zeros. Colons (as openssl prints) and a 0x prefix are
// accepted.
func normSerial(v string) (string, error) {
	v = strings.ToLower(strings.TrimSpace(v))
	v = strings.TrimPrefix(v, "0x")
	v = strings.ReplaceAll(v, ":", "")
	if v == "" || len(v) > 2*maxSerialDigits {
		return "", fmt.Errorf("want 1 to %d hex digits", maxSerialDigits)
	}
	if !isHex(v) {
		return "", fmt.Errorf("not hex")
	}
	v = strings.TrimLeft(v, "0")
	if v == "" {
		return "", fmt.Errorf("zero is not a serial")
	}
	if len(v) > maxSerialDigits {
		return "", fmt.Errorf("more than %d hex digits", maxSerialDigits)
	}
	return v, nil
}

func checkReason(reason string) (string, error) {
	reason = strings.TrimSpace(reason)
	switch {
	case reason == "":
		return "", fmt.Errorf("%w: revocation: a reason is required", ErrInvalid)
	case len(reason) > MaxReason:
		return "", fmt.Errorf("%w: revocation: the reason is %d bytes, more than %d", ErrInvalid, len(reason), MaxReason)
	}
	return bounded.Text(reason, MaxReason), nil
}
