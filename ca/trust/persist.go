package trust

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// FormatVersion is the version of the document Marshal writes. Unmarshal
// refuses any other: a newer control plane's state is not half-read by an
// older one.
const FormatVersion = 1

// The stored document. Its types are apart from the package's so that a
// field added to the API does not silently change (or vanish from) what
// is stored.
type document struct {
	Version      int              `json:"version"`
	TrustDomain  string           `json:"trustDomain"`
	Revision     uint64           `json:"revision"`
	Sequence     uint64           `json:"sequence"`
	Authorities  []docAuthority   `json:"authorities"`
	Revocations  []docRevocation  `json:"revocations,omitempty"`
	ImportedCRLs []docImportedCRL `json:"importedCRLs,omitempty"`
	Rotation     *docRotation     `json:"rotation,omitempty"`
	Events       []docEvent       `json:"events,omitempty"`
}

type docAuthority struct {
	ID            string    `json:"id"`
	Phase         string    `json:"phase"`
	Origin        string    `json:"origin,omitempty"`
	Root          string    `json:"root"`              // PEM
	RootKey       string    `json:"rootKey,omitempty"` // PEM, PKCS#8
	Chain         string    `json:"chain"`             // PEM, signing certificate first
	Key           string    `json:"key"`               // PEM, PKCS#8
	CRL           []byte    `json:"crl,omitempty"`     // DER
	Revoked       bool      `json:"revoked,omitempty"`
	RevokedAt     time.Time `json:"revokedAt,omitzero"`
	RevokedReason string    `json:"revokedReason,omitempty"`
	PreparedSeq   uint64    `json:"preparedSeq"`
	PreparedAt    time.Time `json:"preparedAt,omitzero"`
	ActivatedAt   time.Time `json:"activatedAt,omitzero"`
	RetiredAt     time.Time `json:"retiredAt,omitzero"`
	RemovedAt     time.Time `json:"removedAt,omitzero"`
}

type docLeaf struct {
	Serial   string    `json:"serial"`
	Issuer   string    `json:"issuer,omitempty"`
	NotAfter time.Time `json:"notAfter,omitzero"`
}

type docRevocation struct {
	Kind    string    `json:"kind"`
	Value   string    `json:"value"`
	Serials []string  `json:"serials,omitempty"`
	Leaves  []docLeaf `json:"leaves,omitempty"`
	Reason  string    `json:"reason"`
	By      string    `json:"by,omitempty"`
	At      time.Time `json:"at"`
	Expires time.Time `json:"expires"`
}

type docImportedCRL struct {
	Authority  string    `json:"authority,omitempty"`
	DER        []byte    `json:"der,omitempty"`
	Problem    string    `json:"problem,omitempty"`
	ImportedAt time.Time `json:"importedAt"`
	By         string    `json:"by,omitempty"`
}

type docRotation struct {
	Kind       string    `json:"kind"`
	Old        string    `json:"old"`
	Target     string    `json:"target,omitempty"`
	Step       string    `json:"step"`
	StartedAt  time.Time `json:"startedAt"`
	By         string    `json:"by,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Auto       bool      `json:"auto,omitempty"`
	Force      bool      `json:"force,omitempty"`
	ConfirmSeq uint64    `json:"confirmSeq,omitempty"`
}

type docEvent struct {
	At        time.Time `json:"at"`
	Who       string    `json:"who,omitempty"`
	Action    string    `json:"action"`
	Authority string    `json:"authority,omitempty"`
	Detail    string    `json:"detail,omitempty"`
	Forced    bool      `json:"forced,omitempty"`
}

// Marshal returns s as a versioned JSON document: certificates and keys
// as PEM (keys PKCS#8), CRLs as DER. A key that cannot be exported (an
// HSM's) is an error naming its authority.
func Marshal(s *State) ([]byte, error) {
	d := document{Version: FormatVersion, TrustDomain: s.TrustDomain.Name(), Revision: s.Revision, Sequence: s.Sequence}
	for i, a := range s.Authorities {
		if a.Root == nil || len(a.Chain) == 0 || a.Key == nil {
			return nil, fmt.Errorf("trust: marshal: authorities[%d] %s: root, chain or key missing", i, a.ID)
		}
		key, err := pemutil.EncodeKey(a.Key)
		if err != nil {
			return nil, fmt.Errorf("trust: marshal: authority %s: key: %w", a.ID, err)
		}
		var rootKey []byte
		if a.RootKey != nil {
			if rootKey, err = pemutil.EncodeKey(a.RootKey); err != nil {
				return nil, fmt.Errorf("trust: marshal: authority %s: root key: %w", a.ID, err)
			}
		}
		d.Authorities = append(d.Authorities, docAuthority{
			ID: a.ID, Phase: string(a.Phase), Origin: a.Origin,
			Root: string(pemutil.EncodeCerts([]*x509.Certificate{a.Root})), RootKey: string(rootKey),
			Chain: string(pemutil.EncodeCerts(a.Chain)), Key: string(key), CRL: a.CRL,
			Revoked: a.Revoked, RevokedAt: a.RevokedAt, RevokedReason: a.RevokedReason,
			PreparedSeq: a.PreparedSeq, PreparedAt: a.PreparedAt, ActivatedAt: a.ActivatedAt, RetiredAt: a.RetiredAt, RemovedAt: a.RemovedAt,
		})
	}
	for _, r := range s.Revocations {
		x := docRevocation{Kind: string(r.Kind), Value: r.Value, Serials: r.Serials, Reason: r.Reason, By: r.By, At: r.At, Expires: r.Expires}
		for _, l := range r.Leaves {
			x.Leaves = append(x.Leaves, docLeaf(l))
		}
		d.Revocations = append(d.Revocations, x)
	}
	for _, c := range s.ImportedCRLs {
		d.ImportedCRLs = append(d.ImportedCRLs, docImportedCRL(c))
	}
	if r := s.Rotation; r != nil {
		x := docRotation(*r)
		d.Rotation = &x
	}
	for _, e := range s.Events {
		d.Events = append(d.Events, docEvent(e))
	}
	return json.MarshalIndent(d, "", "  ")
}

// Unmarshal reads a document Marshal wrote and validates it: every
// certificate and key parses, every authority's keys belong to its
// certificates and its ID to its signing certificate, IDs are unique,
// exactly one authority is active, and every reference (revocation
// issuers, imported CRLs, the rotation) names a known authority. Each
// problem is reported, naming the authority and the field. Validity
// periods are not checked: a stored state keeps expired authorities.
func Unmarshal(data []byte) (*State, error) {
	var d document
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("trust: state: %w", err)
	}
	if d.Version != FormatVersion {
		return nil, fmt.Errorf("trust: state: version: %d, this build reads %d", d.Version, FormatVersion)
	}
	td, err := spiffeid.TrustDomainFromString(d.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust: state: trustDomain: %w", err)
	}
	s := &State{TrustDomain: td, Revision: d.Revision, Sequence: d.Sequence}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("trust: state: "+format, args...)) }
	if d.Sequence == 0 {
		bad("sequence: 0; the first state is 1")
	}
	ids := map[string]bool{}
	active := 0
	for i, x := range d.Authorities {
		where := fmt.Sprintf("authorities[%d] (id %q)", i, x.ID)
		a, problems := readAuthority(x, td, d.Sequence)
		for _, p := range problems {
			bad("%s: %s", where, p)
		}
		if a == nil {
			continue
		}
		if ids[a.ID] {
			bad("%s: id: another authority has it", where)
		}
		ids[a.ID] = true
		if a.Phase == Active {
			active++
		}
		s.Authorities = append(s.Authorities, a)
	}
	if active != 1 && len(errs) == 0 {
		bad("authorities: %d are active, want exactly 1", active)
	}
	for i, x := range d.Revocations {
		where := fmt.Sprintf("revocations[%d] (%s %q)", i, x.Kind, x.Value)
		r := Revocation{Kind: RevocationKind(x.Kind), Value: x.Value, Serials: x.Serials, Reason: x.Reason, By: x.By, At: x.At, Expires: x.Expires}
		if v, err := s.normValue(r.Kind, r.Value); err != nil {
			bad("%s: %v", where, err)
		} else if v != r.Value {
			bad("%s: value: not in normal form (%q)", where, v)
		}
		if len(x.Reason) > MaxReason {
			bad("%s: reason: %d bytes, more than %d", where, len(x.Reason), MaxReason)
		}
		if len(x.Leaves) > maxLeavesPerEntry || len(x.Serials) > maxLeavesPerEntry+1 {
			bad("%s: leaves: more than %d", where, maxLeavesPerEntry)
		}
		for j, sn := range x.Serials {
			if v, err := normSerial(sn); err != nil || v != sn {
				bad("%s: serials[%d]: %q is not a serial in lower-case hex", where, j, sn)
			}
		}
		for j, l := range x.Leaves {
			if v, err := normSerial(l.Serial); err != nil || v != l.Serial {
				bad("%s: leaves[%d]: serial: %q is not a serial in lower-case hex", where, j, l.Serial)
			}
			if l.Issuer != "" && !ids[l.Issuer] {
				bad("%s: leaves[%d]: issuer: no authority %q", where, j, l.Issuer)
			}
			r.Leaves = append(r.Leaves, LeafInfo(l))
		}
		s.Revocations = append(s.Revocations, r)
	}
	for i, x := range d.ImportedCRLs {
		if x.Authority != "" && !ids[x.Authority] {
			bad("importedCRLs[%d]: authority: no authority %q", i, x.Authority)
		}
		if len(x.DER) > MaxImportedCRLBytes {
			bad("importedCRLs[%d]: der: %d bytes, more than %d", i, len(x.DER), MaxImportedCRLBytes)
		}
		if x.Problem == "" {
			if x.Authority == "" {
				bad("importedCRLs[%d]: authority: missing for a CRL without a problem", i)
			} else if _, err := x509.ParseRevocationList(x.DER); err != nil {
				bad("importedCRLs[%d]: der: %v", i, err)
			}
		}
		s.ImportedCRLs = append(s.ImportedCRLs, ImportedCRL(x))
	}
	if x := d.Rotation; x != nil {
		if x.Kind != "root" && x.Kind != "intermediate" {
			bad("rotation: kind: %q is neither root nor intermediate", x.Kind)
		}
		switch x.Step {
		case StepPrepare, StepActivate, StepReissue, StepRemove, StepConfirm, StepDone:
		default:
			bad("rotation: step: %q is no step", x.Step)
		}
		if !ids[x.Old] {
			bad("rotation: old: no authority %q", x.Old)
		}
		if x.Target != "" && !ids[x.Target] {
			bad("rotation: target: no authority %q", x.Target)
		}
		if x.Target == "" && x.Step != StepPrepare {
			bad("rotation: target: missing at step %s", x.Step)
		}
		r := Rotation(*x)
		s.Rotation = &r
	}
	if len(d.Events) > MaxEvents {
		bad("events: %d, more than %d", len(d.Events), MaxEvents)
	}
	for _, e := range d.Events {
		s.Events = append(s.Events, Event(e))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// readAuthority parses and checks one stored authority; nil when it is
// unusable.
func readAuthority(x docAuthority, td spiffeid.TrustDomain, seq uint64) (*Authority, []string) {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	a := &Authority{ID: x.ID, Phase: Phase(x.Phase), Origin: x.Origin, CRL: x.CRL, Revoked: x.Revoked, RevokedAt: x.RevokedAt,
		RevokedReason: x.RevokedReason, PreparedSeq: x.PreparedSeq, PreparedAt: x.PreparedAt, ActivatedAt: x.ActivatedAt,
		RetiredAt: x.RetiredAt, RemovedAt: x.RemovedAt}
	switch a.Phase {
	case Prepared, Active, Retired, Removed:
	default:
		bad("phase: %q is no phase", x.Phase)
	}
	if x.PreparedSeq > seq {
		bad("preparedSeq: %d, after the state's sequence %d", x.PreparedSeq, seq)
	}
	if roots, err := pemutil.ParseCerts([]byte(x.Root)); err != nil {
		bad("root: %v", err)
	} else if len(roots) != 1 {
		bad("root: %d certificates, want 1", len(roots))
	} else {
		a.Root = roots[0]
	}
	if chain, err := pemutil.ParseCerts([]byte(x.Chain)); err != nil {
		bad("chain: %v", err)
	} else {
		a.Chain = chain
	}
	readKey := func(field, data string) crypto.Signer {
		k, err := pemutil.ParseKey([]byte(data))
		if err != nil {
			bad("%s: %v", field, err)
		}
		return k
	}
	a.Key = readKey("key", x.Key)
	if x.RootKey != "" {
		a.RootKey = readKey("rootKey", x.RootKey)
	}
	if len(problems) > 0 {
		return nil, problems
	}
	if want := authorityID(a.Signing()); a.ID != want {
		bad("id: the signing certificate's is %s", want)
		return nil, problems
	}
	if err := a.check(); err != nil {
		bad("%v", err)
		return nil, problems
	}
	if err := namesOnly(td, append([]*x509.Certificate{a.Root}, a.Chain...)...); err != nil {
		bad("%v", err)
	}
	if len(a.CRL) > 0 {
		if rl, err := x509.ParseRevocationList(a.CRL); err != nil {
			bad("crl: %v", err)
		} else if err := rl.CheckSignatureFrom(a.Signing()); err != nil {
			bad("crl: not signed by the signing certificate: %v", err)
		}
	}
	if len(problems) > 0 {
		return nil, problems
	}
	return a, nil
}
