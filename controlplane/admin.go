package controlplane

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
)

// adminService implements TrustAdmin over the trust manager. With a CA
// given by the embedder (Config.CA) there is no manager: Status says so
// and every step is refused.
type adminService struct {
	cav1.UnimplementedTrustAdminServer
	t *trustManager // nil: no lifecycle here
}

// errUnmanaged answers a step when the control plane has no lifecycle.
var errUnmanaged = status.Error(codes.FailedPrecondition,
	"this control plane's CA was given to it by its embedder (Config.CA): it has no trust lifecycle to change here")

// unmanagedNote is what Status says of such a CA.
const unmanagedNote = "the CA was given to the control plane by its embedder (Config.CA): no lifecycle, rotation or revocation here"

// Status reports the trust lifecycle as this control plane sees it.
func (s *adminService) Status(ctx context.Context, _ *cav1.StatusRequest) (*cav1.TrustStatus, error) {
	if _, err := callerOf(ctx, ""); err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	if s.t == nil {
		return &cav1.TrustStatus{Unmanaged: unmanagedNote}, nil
	}
	t := s.t
	st := t.auth.State()
	ev := t.evidence(ctx, st)
	out := TrustStatusOf(st, &ev)
	out.Leading = t.coord.Leading()
	out.Warnings = append(out.Warnings, t.warnings()...)
	if g := t.Waiting(); g != nil && out.Rotation != nil && g.Step == out.Rotation.Step {
		out.Rotation.Waiting = g.Why
		out.Rotation.Laggards = g.Laggards
	}
	return out, nil
}

// step runs one operator's step: who from the kernel, the State loaded,
// the step applied with evidence gathered now, the State saved.
func (s *adminService) step(ctx context.Context, opr *cav1.Operator, f func(st *trust.State, ev trust.Evidence, op trust.Operation) (string, error)) (*cav1.ChangeResponse, error) {
	who, err := callerOf(ctx, opr.GetAs())
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	if s.t == nil {
		return nil, errUnmanaged
	}
	op := trust.Operation{Who: who, Force: opr.GetForce(), Reason: bounded.Text(opr.GetReason(), bounded.Message), Now: s.t.now()}
	var id string
	var after error // a refusal recorded in the State (a rejected CRL): saved, then answered
	st, events, err := s.t.mutate(ctx, func(st *trust.State, ev trust.Evidence) error {
		var ferr error
		id, ferr = f(st, ev, op)
		if errors.Is(ferr, trust.ErrCRLRejected) {
			after = ferr
			return nil
		}
		return ferr
	})
	if err != nil {
		return nil, statusOf(err)
	}
	if after != nil {
		return nil, statusOf(after)
	}
	resp := &cav1.ChangeResponse{Sequence: st.Sequence, Authority: id}
	for _, e := range events {
		resp.Events = append(resp.Events, eventProto(e))
	}
	return resp, nil
}

// Prepare mints an authority or takes one handed in.
func (s *adminService) Prepare(ctx context.Context, req *cav1.PrepareRequest) (*cav1.ChangeResponse, error) {
	handIn := len(req.GetCertPem()) > 0 || len(req.GetKeyPem()) > 0
	switch {
	case handIn && req.GetKind() != "":
		return nil, status.Error(codes.InvalidArgument, "prepare: give a kind to mint, or a certificate and key to hand in, not both")
	case !handIn && req.GetKind() != "root" && req.GetKind() != "intermediate":
		return nil, status.Errorf(codes.InvalidArgument, "prepare: kind %s: want root or intermediate", bounded.Quote(req.GetKind(), bounded.Name))
	}
	var root *x509.Certificate
	var chain []*x509.Certificate
	var key crypto.Signer
	if handIn {
		var err error
		if root, chain, key, err = parseHandIn(req); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	return s.step(ctx, req.GetOperator(), func(st *trust.State, _ trust.Evidence, op trust.Operation) (string, error) {
		if handIn {
			a, err := trust.HandIn(st, root, chain, key, op)
			if err != nil {
				return "", err
			}
			return a.ID, nil
		}
		act := st.Active()
		if act == nil {
			return "", fmt.Errorf("%w: prepare: no authority is active to mint a successor of", trust.ErrIllegal)
		}
		a, err := s.t.mint(op.Now)(req.GetKind(), act)
		if err != nil {
			return "", fmt.Errorf("prepare %s: %w", req.GetKind(), err)
		}
		if err := trust.Prepare(st, a, op); err != nil {
			return "", err
		}
		return a.ID, nil
	})
}

// parseHandIn reads a handed-in authority: the signing certificate (and
// perhaps more of its chain) in cert_pem, any further intermediates in
// chain_pem, its key, and its root when given.
func parseHandIn(req *cav1.PrepareRequest) (*x509.Certificate, []*x509.Certificate, crypto.Signer, error) {
	if len(req.GetCertPem()) == 0 || len(req.GetKeyPem()) == 0 {
		return nil, nil, nil, errors.New("prepare: a handed-in authority needs its certificate and its key")
	}
	chain, err := pemutil.ParseCerts(req.GetCertPem())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("prepare: certificate: %w", err)
	}
	if len(req.GetChainPem()) > 0 {
		more, err := pemutil.ParseCerts(req.GetChainPem())
		if err != nil {
			return nil, nil, nil, fmt.Errorf("prepare: chain: %w", err)
		}
		chain = append(chain, more...)
	}
	key, err := pemutil.ParseKey(req.GetKeyPem())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("prepare: key: %w", err)
	}
	var root *x509.Certificate
	if len(req.GetRootPem()) > 0 {
		roots, err := pemutil.ParseCerts(req.GetRootPem())
		if err != nil {
			return nil, nil, nil, fmt.Errorf("prepare: root: %w", err)
		}
		if len(roots) != 1 {
			return nil, nil, nil, fmt.Errorf("prepare: root: %d certificates; give exactly one", len(roots))
		}
		root = roots[0]
	}
	// A root in the chain file is the root, not an intermediate.
	for len(chain) > 1 && isSelfSigned(chain[len(chain)-1]) {
		if root == nil {
			root = chain[len(chain)-1]
		}
		chain = chain[:len(chain)-1]
	}
	return root, chain, key, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return string(c.RawIssuer) == string(c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// Activate activates a prepared authority.
func (s *adminService) Activate(ctx context.Context, req *cav1.AuthorityRequest) (*cav1.ChangeResponse, error) {
	return s.step(ctx, req.GetOperator(), func(st *trust.State, ev trust.Evidence, op trust.Operation) (string, error) {
		return idOf(st, req.GetId()), trust.Activate(st, req.GetId(), ev, op)
	})
}

// Retire retires an authority.
func (s *adminService) Retire(ctx context.Context, req *cav1.AuthorityRequest) (*cav1.ChangeResponse, error) {
	return s.step(ctx, req.GetOperator(), func(st *trust.State, ev trust.Evidence, op trust.Operation) (string, error) {
		return idOf(st, req.GetId()), trust.Retire(st, req.GetId(), ev, op)
	})
}

// Remove removes an authority from the bundle.
func (s *adminService) Remove(ctx context.Context, req *cav1.AuthorityRequest) (*cav1.ChangeResponse, error) {
	return s.step(ctx, req.GetOperator(), func(st *trust.State, ev trust.Evidence, op trust.Operation) (string, error) {
		return idOf(st, req.GetId()), trust.Remove(st, req.GetId(), ev, op)
	})
}

func idOf(st *trust.State, id string) string {
	if a := st.Get(id); a != nil {
		return a.ID
	}
	return ""
}

// Rotate starts a rotation, or answers with the one in progress.
func (s *adminService) Rotate(ctx context.Context, req *cav1.RotateRequest) (*cav1.RotateResponse, error) {
	kind := req.GetKind()
	if kind != "" && kind != "root" && kind != "intermediate" {
		return nil, status.Errorf(codes.InvalidArgument, "rotate: kind %s: want root or intermediate", bounded.Quote(kind, bounded.Name))
	}
	if kind != "" && req.GetTarget() != "" {
		return nil, status.Error(codes.InvalidArgument, "rotate: give a kind to mint the new authority, or the prepared one to rotate to, not both")
	}
	if _, err := callerOf(ctx, ""); err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	if s.t == nil {
		return nil, errUnmanaged
	}
	var attached *trust.Rotation
	resp, err := s.step(ctx, req.GetOperator(), func(st *trust.State, _ trust.Evidence, op trust.Operation) (string, error) {
		if r := st.Rotation; r != nil {
			if (kind != "" && kind != r.Kind) || (req.GetTarget() != "" && idOf(st, req.GetTarget()) != r.Target) {
				return "", fmt.Errorf("%w: rotate: a %s rotation of %s is in progress (step %s); let it finish first", trust.ErrIllegal, r.Kind, r.Old, r.Step)
			}
			x := *r
			attached = &x
			return r.Target, errAttached
		}
		target := req.GetTarget()
		if target == "" && kind == "" {
			// An authority the operator prepared (handed in, say) is what a
			// plain rotate means; without one, a new intermediate.
			target = newestPrepared(st)
		}
		if target != "" {
			return idOf(st, target), trust.StartRotationTo(st, target, op)
		}
		if kind == "" {
			kind = "intermediate"
		}
		return activeID(st), trust.StartRotation(st, kind, op)
	})
	if attached != nil {
		return &cav1.RotateResponse{Rotation: rotationProto(attached), Attached: true}, nil
	}
	if err != nil {
		return nil, err
	}
	s.t.kick()
	out := &cav1.RotateResponse{Events: resp.GetEvents()}
	if st := s.t.auth.State(); st.Rotation != nil {
		out.Rotation = rotationProto(st.Rotation)
	}
	return out, nil
}

// CancelRotation forgets the rotation in progress.
func (s *adminService) CancelRotation(ctx context.Context, req *cav1.CancelRotationRequest) (*cav1.ChangeResponse, error) {
	return s.step(ctx, req.GetOperator(), func(st *trust.State, _ trust.Evidence, op trust.Operation) (string, error) {
		id := ""
		if st.Rotation != nil {
			id = st.Rotation.Target
		}
		return id, trust.CancelRotation(st, op)
	})
}

// newestPrepared is the ID of the authority prepared last and not
// revoked, or "".
func newestPrepared(st *trust.State) string {
	for i := len(st.Authorities) - 1; i >= 0; i-- {
		if a := st.Authorities[i]; a.Phase == trust.Prepared && !a.Revoked {
			return a.ID
		}
	}
	return ""
}

// errAttached stops a Rotate that found a rotation in progress before
// anything is saved.
var errAttached = errors.New("attached")

// Revoke adds an entry to the revocation list.
func (s *adminService) Revoke(ctx context.Context, req *cav1.RevokeRequest) (*cav1.ChangeResponse, error) {
	kind, err := revocationKind(req.GetKind(), req.GetValue())
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.GetOperator().GetReason()) == "" {
		return nil, status.Error(codes.InvalidArgument, "revoke: a reason is required (it is kept in the audit trail)")
	}
	return s.step(ctx, req.GetOperator(), func(st *trust.State, ev trust.Evidence, op trust.Operation) (string, error) {
		// The leaves the revoked workloads present now go on the CRLs at
		// once; the trust loop adds any it learns of later.
		kind, value, err := authoritySerial(st, kind, req.GetValue())
		if err != nil {
			return "", err
		}
		r := trust.Revocation{Kind: kind, Value: value, Reason: req.GetOperator().GetReason(),
			Leaves: s.t.leavesOf(st, kind, strings.TrimSpace(value), ev, nil)}
		return "", trust.Revoke(st, r, op)
	})
}

// Unrevoke drops an entry of the revocation list.
func (s *adminService) Unrevoke(ctx context.Context, req *cav1.UnrevokeRequest) (*cav1.ChangeResponse, error) {
	kind, err := revocationKind(req.GetKind(), req.GetValue())
	if err != nil {
		return nil, err
	}
	return s.step(ctx, req.GetOperator(), func(st *trust.State, _ trust.Evidence, op trust.Operation) (string, error) {
		kind, value, err := authoritySerial(st, kind, req.GetValue())
		if err != nil {
			return "", err
		}
		return "", trust.Unrevoke(st, kind, value, op)
	})
}

func revocationKind(kind, value string) (trust.RevocationKind, error) {
	switch k := trust.RevocationKind(kind); k {
	case trust.BySerial, trust.ByWorkload, trust.ByID, byAuthority:
		if strings.TrimSpace(value) == "" {
			return "", status.Errorf(codes.InvalidArgument, "revoke: the %s to revoke is empty", kind)
		}
		return k, nil
	}
	return "", status.Errorf(codes.InvalidArgument, "revoke: kind %s: want serial, workload, id or authority", bounded.Quote(kind, bounded.Name))
}

// byAuthority names an authority by its ID (or a prefix of it) in a
// revocation: the revocation of its signing certificate's serial, which
// an operator would otherwise have to dig out of the certificate.
const byAuthority trust.RevocationKind = "authority"

// authoritySerial turns a revocation by authority into the one by serial
// it stands for, in st; any other kind is returned as it is.
func authoritySerial(st *trust.State, kind trust.RevocationKind, value string) (trust.RevocationKind, string, error) {
	if kind != byAuthority {
		return kind, value, nil
	}
	a := st.Get(strings.TrimSpace(value))
	if a == nil {
		return "", "", fmt.Errorf("%w: %s (see bulwark ca status)", trust.ErrNotFound, bounded.Quote(value, bounded.Name))
	}
	return trust.BySerial, a.Signing().SerialNumber.Text(16), nil
}

// ImportCRL takes an organisation's own CRL.
func (s *adminService) ImportCRL(ctx context.Context, req *cav1.ImportCRLRequest) (*cav1.ChangeResponse, error) {
	der := req.GetCrl()
	if b, _ := pem.Decode(der); b != nil && b.Type == "X509 CRL" {
		der = b.Bytes
	}
	return s.step(ctx, req.GetOperator(), func(st *trust.State, _ trust.Evidence, op trust.Operation) (string, error) {
		err := trust.ImportCRL(st, der, op)
		if n := len(st.ImportedCRLs); n > 0 {
			return st.ImportedCRLs[n-1].Authority, err
		}
		return "", err
	})
}

// ClearCRL drops an authority's imported CRL.
func (s *adminService) ClearCRL(ctx context.Context, req *cav1.ClearCRLRequest) (*cav1.ChangeResponse, error) {
	return s.step(ctx, req.GetOperator(), func(st *trust.State, _ trust.Evidence, op trust.Operation) (string, error) {
		return idOf(st, req.GetAuthority()), trust.ClearCRL(st, req.GetAuthority(), op)
	})
}

// statusOf maps a refusal of the trust package onto a gRPC status: a gate
// is FAILED_PRECONDITION with a GateRefusal naming the laggards, an
// illegal move FAILED_PRECONDITION, an unknown authority NOT_FOUND, a bad
// argument INVALID_ARGUMENT.
func statusOf(err error) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	var g *trust.GateError
	switch {
	case errors.As(err, &g):
		st := status.New(codes.FailedPrecondition, err.Error())
		if d, derr := st.WithDetails(&cav1.GateRefusal{Step: g.Step, Authority: g.Authority, Why: g.Why, Laggards: g.Laggards, Breaks: g.Breaks}); derr == nil {
			st = d
		}
		return st.Err()
	case errors.Is(err, trust.ErrIllegal):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, trust.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, trust.ErrAmbiguous), errors.Is(err, trust.ErrInvalid), errors.Is(err, trust.ErrCRLRejected):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}
