package trust

import (
	"errors"
	"time"
)

// More errors of the package, beside ErrIllegal and ErrConflict in
// api.go. Callers test for them with errors.Is.
var (
	// ErrNotFound means no authority has the ID (or ID prefix) given.
	ErrNotFound = errors.New("trust: no such authority")
	// ErrAmbiguous means an ID prefix matches more than one authority.
	ErrAmbiguous = errors.New("trust: ambiguous authority ID")
	// ErrInvalid means an argument (a certificate, a key, a revocation)
	// is malformed or does not fit the state.
	ErrInvalid = errors.New("trust: invalid")
	// ErrCRLRejected means an imported CRL did not validate. It was kept,
	// with its problem, for status; it changes nothing else.
	ErrCRLRejected = errors.New("trust: CRL rejected")
)

// DefaultReissueWithin is Bundle.ReissueWithin unless the caller sets
// another: after an activation, workloads replace their leaves spread
// over this long, so the new authority is not asked for every leaf of
// the mesh at once.
const DefaultReissueWithin = 2 * time.Minute
