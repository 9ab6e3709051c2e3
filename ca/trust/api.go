package trust

// THIS FILE IS THE AGREED SHAPE OF THE PACKAGE (written before the
// implementation): names and meanings here are what other packages code
// against. Bodies live in the other files of the package.

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Phase is where an authority is in its life.
type Phase string

const (
	Prepared Phase = "prepared"
	Active   Phase = "active"
	Retired  Phase = "retired"
	Removed  Phase = "removed"
)

// Authority is a root and the chain that signs leaves under it.
type Authority struct {
	// ID names the authority in commands and status: the first 12 hex
	// digits of the SHA-256 of the signing certificate's DER.
	ID    string
	Phase Phase
	Root  *x509.Certificate
	// RootKey is nil when Bulwark does not hold the root's key (an
	// organisation's own PKI): no automatic intermediate renewal then.
	RootKey crypto.Signer
	// Chain is the signing certificate first, then any intermediates up
	// to (not including) Root.
	Chain []*x509.Certificate
	Key   crypto.Signer
	// CRL is the DER CRL that Chain[0] signed over the revoked leaves it
	// issued; rebuilt at every change of the revocations. Empty for a
	// removed or revoked authority.
	CRL []byte
	// Revoked: the signing certificate itself is revoked. Its CRL leaves
	// the bundle, so every leaf it signed is refused by every proxy.
	Revoked bool
	// RevokedAt and RevokedReason say when and why (added by the
	// implementation, for status).
	RevokedAt     time.Time
	RevokedReason string
	// PreparedSeq is the bundle sequence that first carried the authority.
	PreparedSeq uint64
	// Origin: "init" (bulwark ca init), "legacy" (a CA directory from
	// before this package), "minted" (made by a rotation), "handed-in"
	// (an operator's next intermediate).
	Origin                                        string
	PreparedAt, ActivatedAt, RetiredAt, RemovedAt time.Time
}

// Signing returns the certificate that signs leaves: Chain[0].
func (a *Authority) Signing() *x509.Certificate { return a.Chain[0] }

// RevocationKind is what a revocation names.
type RevocationKind string

const (
	BySerial   RevocationKind = "serial"   // one certificate, by serial (hex)
	ByWorkload RevocationKind = "workload" // every certificate of a workload, namespace/name
	ByID       RevocationKind = "id"       // every certificate with a SPIFFE ID
)

// Revocation is one entry of the revocation list.
type Revocation struct {
	Kind  RevocationKind
	Value string
	// Serials (lower-case hex) are the certificates the entry covers, as
	// far as they are known; more are added as replicas learn them
	// (AddSerials). Every one is on its issuer's CRL.
	Serials []string
	// Leaves are the certificates of Serials whose issuer or expiry is
	// known (added by the implementation): a serial with a known issuer
	// is on that authority's CRL only, one without on every CRL; their
	// NotAfter sets Expires.
	Leaves []LeafInfo
	Reason string
	By     string
	At     time.Time
	// Expires is when no certificate the entry covers can be valid any
	// more; Prune drops the entry then.
	Expires time.Time
}

// Event is one line of the audit trail kept in the State (the latest
// MaxEvents; every event is also logged and counted by the caller).
type Event struct {
	At        time.Time
	Who       string
	Action    string // prepare, activate, retire, remove, revoke, unrevoke, import-crl, clear-crl, rotate, ...
	Authority string
	Detail    string
	// Forced: a gate refused the step and Operation.Force overrode it;
	// Detail says what that breaks.
	Forced bool
}

// MaxEvents bounds State.Events.
const MaxEvents = 200

// Rotation is a rotation in progress, persisted so that a control plane
// restarted in the middle resumes it where it was instead of starting
// over (nothing is minted twice: Target is set once the new authority is
// prepared and stored).
type Rotation struct {
	Kind      string // "root" or "intermediate"
	Old       string // the authority being replaced
	Target    string // the new authority, once prepared
	Step      string // "prepare", "activate", "reissue", "remove", "confirm", "done"
	StartedAt time.Time
	By        string
	Reason    string
	Auto      bool // started by the automatic intermediate renewal
	Force     bool
	// ConfirmSeq is the bundle sequence that no longer carries Old
	// (added by the implementation): the rotation is done when every
	// proxy has acknowledged it.
	ConfirmSeq uint64
}

// ImportedCRL is an organisation's own CRL handed in for one of the
// authorities. Its entries are copied into that authority's CRL when it
// validates; a CRL that does not validate is kept with the Problem, for
// status, and changes nothing.
type ImportedCRL struct {
	Authority  string
	DER        []byte
	Problem    string
	ImportedAt time.Time
	By         string
}

// State is everything the trust lifecycle keeps.
type State struct {
	TrustDomain spiffeid.TrustDomain
	// Revision is the Store's compare-and-swap counter: Save succeeds only
	// if the stored revision is still the one this State was loaded with,
	// and bumps it.
	Revision uint64
	// Sequence is the trust bundle's sequence number: every change of
	// what Bundle returns moves it forward.
	Sequence     uint64
	Authorities  []*Authority
	Revocations  []Revocation
	ImportedCRLs []ImportedCRL
	Rotation     *Rotation
	Events       []Event
}

// Bundle is what every workload and proxy is handed: the trust anchors,
// the CRLs, and which authority signs now.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	Sequence    uint64
	// Roots are the distinct roots of every authority not removed.
	Roots []*x509.Certificate
	// CRLs hold one DER CRL per authority that is neither removed nor
	// revoked. Proxies check the leaf against its issuer's CRL only, and
	// refuse a leaf whose issuer has none here.
	CRLs [][]byte
	// Signing is the active authority's signing certificate. A workload
	// whose leaf another authority signed replaces it within
	// ReissueWithin, spread at random.
	Signing *x509.Certificate
	// ReissueWithin spreads re-issuance after an activation.
	ReissueWithin time.Duration
}

// LeafInfo describes a certificate a connected workload presents.
type LeafInfo struct {
	Serial string // lower-case hex
	// Issuer is the ID of the authority that signed it ("" if none known).
	Issuer   string
	NotAfter time.Time
}

// ProxyAck is what the control plane knows of one connected proxy.
type ProxyAck struct {
	Node    string // the workload, namespace/name
	Replica string // the control plane replica it is connected to; "" in one process
	// AgentSeq is the bundle sequence its agent holds; ProxySeq the one its
	// Envoy has acknowledged (loaded).
	AgentSeq, ProxySeq uint64
	// Reported is false for a proxy connected over ADS whose agent has
	// reported nothing: it counts as holding no bundle.
	Reported bool
	Leaves   []LeafInfo
}

// Evidence is what the gates decide on.
type Evidence struct {
	Proxies []ProxyAck
	// Missing are sources of evidence that are absent or stale (a replica
	// whose report is too old): while any is missing, a gate refuses,
	// since the proxies it would vouch for are unknown.
	Missing []string
}

// Operation is who does a step, and how.
type Operation struct {
	Who    string
	Force  bool
	Reason string
	Now    time.Time
}

// GateError is a step refused because the mesh is not ready for it.
type GateError struct {
	Step      string // activate, remove
	Authority string
	Why       string
	// Laggards name the proxies (or sources of evidence) holding it up.
	Laggards []string
	// Breaks says what forcing the step would break.
	Breaks string
}

// ErrIllegal wraps a step the state machine does not allow (activate an
// authority that is not prepared, remove the active one, ...).
var ErrIllegal = errors.New("trust: not allowed")

// ErrConflict is returned by Store.Save when someone else saved first:
// load again and redo the step.
var ErrConflict = errors.New("trust: the stored state changed; load it again")

// Store persists a State.
type Store interface {
	// Load returns the stored State. A store that holds only the files of
	// a CA from before this package returns them as one active authority
	// (Origin "legacy") at Sequence 1, not yet saved.
	Load(ctx context.Context) (*State, error)
	// Save stores s if the stored revision is still s.Revision, and bumps
	// s.Revision; ErrConflict otherwise.
	Save(ctx context.Context, s *State) error
}
