package trust

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/bulwarkmesh/bulwark/internal/bounded"
)

// Bounds of an imported CRL: an organisation's CRL is copied into the
// state, which is stored whole and pushed to every proxy.
const (
	MaxImportedCRLBytes   = 1 << 20
	MaxImportedCRLEntries = 100_000
	// maxRejectedCRLs bounds the rejected CRLs kept for status.
	maxRejectedCRLs = 10
)

// rebuildCRLs re-signs the CRL of every authority that publishes one
// (neither removed nor revoked) with the current sequence as its number,
// and clears the others. All are built before any is replaced.
func (s *State) rebuildCRLs(now time.Time) error {
	entries := s.crlEntries()
	built := make([][]byte, len(s.Authorities))
	for i, a := range s.Authorities {
		if a.Phase == Removed || a.Revoked {
			continue
		}
		der, err := signCRL(a, entries[a.ID], s.Sequence, now)
		if err != nil {
			return fmt.Errorf("trust: authority %s: CRL: %w", a.ID, err)
		}
		built[i] = der
	}
	for i, a := range s.Authorities {
		a.CRL = built[i]
	}
	return nil
}

// signCRL signs the CRL of a. It is valid from 30 seconds before now (a
// proxy with a slow clock refuses a CRL from its future, and with it
// every leaf of a) until a's signing certificate expires: it is pushed
// with every bundle, never fetched, so it never needs re-signing to stay
// fresh.
func signCRL(a *Authority, revoked []x509.RevocationListEntry, seq uint64, now time.Time) ([]byte, error) {
	signing := a.Signing()
	this := now.Add(-backdate)
	if !this.Before(signing.NotAfter) {
		// An expired authority: nothing it signed is valid anyway; the
		// CRL only has to be well-formed.
		this = signing.NotAfter.Add(-time.Second)
	}
	tmpl := &x509.RevocationList{
		Number:                    new(big.Int).SetUint64(seq),
		ThisUpdate:                this,
		NextUpdate:                signing.NotAfter,
		RevokedCertificateEntries: revoked,
	}
	return x509.CreateRevocationList(rand.Reader, tmpl, signing, a.Key)
}

// crlEntries returns, per authority ID, the serials its CRL lists: every
// revoked serial whose issuer is known goes on that issuer's CRL, one
// whose issuer is unknown on every CRL (listing a serial another
// authority issued changes nothing), and the entries of valid imported
// CRLs on their authority's. Sorted by serial, so that the DER depends on
// the revocations only.
func (s *State) crlEntries() map[string][]x509.RevocationListEntry {
	type entry struct {
		at     time.Time
		serial *big.Int
	}
	per := map[string]map[string]entry{}
	add := func(id, serial string, at time.Time) {
		n, ok := new(big.Int).SetString(serial, 16)
		if !ok {
			return // validated on the way in; Unmarshal checks again
		}
		m := per[id]
		if m == nil {
			m = map[string]entry{}
			per[id] = m
		}
		if e, ok := m[serial]; !ok || at.Before(e.at) {
			m[serial] = entry{at: at, serial: n}
		}
	}
	for _, r := range s.Revocations {
		issuer := map[string]string{}
		for _, l := range r.Leaves {
			issuer[l.Serial] = l.Issuer
		}
		for _, sn := range r.Serials {
			if id := issuer[sn]; id != "" {
				add(id, sn, r.At)
				continue
			}
			for _, a := range s.Authorities {
				add(a.ID, sn, r.At)
			}
		}
	}
	for _, imp := range s.ImportedCRLs {
		if imp.Problem != "" || imp.Authority == "" {
			continue
		}
		rl, err := x509.ParseRevocationList(imp.DER)
		if err != nil {
			continue
		}
		for _, e := range rl.RevokedCertificateEntries {
			if e.SerialNumber != nil && e.SerialNumber.Sign() > 0 {
				add(imp.Authority, serialHex(e.SerialNumber), e.RevocationTime)
			}
		}
	}
	out := map[string][]x509.RevocationListEntry{}
	for id, m := range per {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		list := make([]x509.RevocationListEntry, len(keys))
		for i, k := range keys {
			list[i] = x509.RevocationListEntry{SerialNumber: m[k].serial, RevocationTime: m[k].at.UTC()}
		}
		out[id] = list
	}
	return out
}

// ImportCRL takes an organisation's own CRL for one of the authorities:
// the one whose signing certificate signed it. A valid CRL replaces any
// earlier import for that authority and its serials go on the
// authority's CRL. A CRL that is too large, does not parse, is signed by
// no authority, or whose NextUpdate has passed is kept with its Problem
// (the latest few, for status) and the error, wrapping ErrCRLRejected,
// says why; it changes nothing else and never blocks anything. Either way
// s has changed and is to be saved.
func ImportCRL(s *State, der []byte, op Operation) error {
	op = opNow(op)
	imp := ImportedCRL{ImportedAt: op.Now, By: bounded.Text(op.Who, bounded.Name)}
	problem := ""
	var issuer *Authority
	switch rl, err := parseCRL(der); {
	case len(der) > MaxImportedCRLBytes:
		problem = fmt.Sprintf("%d bytes, more than the %d accepted", len(der), MaxImportedCRLBytes)
	case err != nil:
		problem = "does not parse: " + err.Error()
	case len(rl.RevokedCertificateEntries) > MaxImportedCRLEntries:
		problem = fmt.Sprintf("%d entries, more than the %d accepted", len(rl.RevokedCertificateEntries), MaxImportedCRLEntries)
	default:
		var named *Authority
		issuer, named = s.crlIssuer(rl)
		switch {
		case issuer == nil && named != nil:
			problem = fmt.Sprintf("it names authority %s as its issuer, but its signature does not verify with that authority's key", named.ID)
		case issuer == nil:
			problem = fmt.Sprintf("signed by none of the authorities (its issuer is %s)", bounded.Quote(rl.Issuer.String(), bounded.Name))
		case !rl.NextUpdate.IsZero() && rl.NextUpdate.Before(op.Now):
			problem = fmt.Sprintf("expired: its next update was due at %s", rl.NextUpdate.UTC().Format(time.RFC3339))
			imp.Authority = issuer.ID
		case issuer.Phase == Removed:
			problem = fmt.Sprintf("its authority %s is removed", issuer.ID)
			imp.Authority = issuer.ID
		default:
			for _, e := range rl.RevokedCertificateEntries {
				if e.SerialNumber == nil || e.SerialNumber.Sign() <= 0 || e.SerialNumber.BitLen() > 160 {
					problem = "lists a serial number that is not a positive number of at most 20 octets"
					break
				}
			}
			imp.Authority = issuer.ID
		}
	}
	if problem != "" {
		imp.Problem = problem
		if len(der) <= MaxImportedCRLBytes {
			imp.DER = der
		}
		// The rejected CRL is kept for status only; changing nothing of
		// the bundle, it needs no new sequence.
		s.ImportedCRLs = append(s.ImportedCRLs, imp)
		rejected := 0
		for i := len(s.ImportedCRLs) - 1; i >= 0; i-- {
			if s.ImportedCRLs[i].Problem == "" {
				continue
			}
			if rejected++; rejected > maxRejectedCRLs {
				s.ImportedCRLs = slices.Delete(s.ImportedCRLs, i, i+1)
			}
		}
		s.event(op, "import-crl", imp.Authority, "rejected: "+problem, false)
		return fmt.Errorf("%w: %s; kept for status, it changes nothing", ErrCRLRejected, problem)
	}
	imp.DER = der
	return s.apply(func(c *State) error {
		c.ImportedCRLs = slices.DeleteFunc(c.ImportedCRLs, func(x ImportedCRL) bool { return x.Authority == issuer.ID })
		c.ImportedCRLs = append(c.ImportedCRLs, imp)
		rl, _ := x509.ParseRevocationList(der)
		return c.commit(op, "import-crl", issuer.ID, fmt.Sprintf("%d revoked serials from %s", len(rl.RevokedCertificateEntries), bounded.Quote(rl.Issuer.String(), bounded.Name)), false)
	})
}

func parseCRL(der []byte) (*x509.RevocationList, error) {
	if len(der) > MaxImportedCRLBytes {
		return nil, nil
	}
	if len(der) == 0 {
		return nil, fmt.Errorf("empty")
	}
	return x509.ParseRevocationList(der)
}

// crlIssuer returns the authority whose signing certificate signed rl,
// or else the one rl names as its issuer (by key identifier, or by name
// when it has none), whose signature then does not verify.
func (s *State) crlIssuer(rl *x509.RevocationList) (signer, named *Authority) {
	for _, a := range s.Authorities {
		signing := a.Signing()
		if len(rl.AuthorityKeyId) > 0 && len(signing.SubjectKeyId) > 0 {
			if !bytes.Equal(rl.AuthorityKeyId, signing.SubjectKeyId) {
				continue
			}
		} else if !bytes.Equal(rl.RawIssuer, signing.RawSubject) {
			continue
		}
		if rl.CheckSignatureFrom(signing) == nil {
			return a, nil
		}
		named = a
	}
	return nil, named
}

// ClearCRL drops the imported CRLs of an authority (ID or prefix); its
// serials leave the authority's CRL. An empty authority clears the
// rejected CRLs that named none.
func ClearCRL(s *State, authority string, op Operation) error {
	op = opNow(op)
	id := ""
	if strings.TrimSpace(authority) != "" {
		a, err := s.lookup(authority)
		if err != nil {
			return err
		}
		id = a.ID
	}
	return s.apply(func(c *State) error {
		n := len(c.ImportedCRLs)
		c.ImportedCRLs = slices.DeleteFunc(c.ImportedCRLs, func(x ImportedCRL) bool { return x.Authority == id })
		if len(c.ImportedCRLs) == n {
			if id == "" {
				return fmt.Errorf("%w: no rejected CRL without an authority to clear", ErrNotFound)
			}
			return fmt.Errorf("%w: authority %s has no imported CRL", ErrNotFound, id)
		}
		return c.commit(op, "clear-crl", id, fmt.Sprintf("%d imported CRLs cleared", n-len(c.ImportedCRLs)), false)
	})
}
