package issuer

import (
	"crypto/sha256"
	"crypto/x509"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bulwarkmesh/bulwark/model"
)

// MaxIssuedPerWorkload bounds the certificates kept per workload by
// IssuedTo: an agent renews at 40-60% of a leaf's life, so 16 covers
// every leaf still valid with room for reissues after rotations and
// restarts; past it the oldest is dropped first.
const MaxIssuedPerWorkload = 16

// IssuedCert is a certificate this server issued to a workload and that
// may still be valid: what a revocation of the workload (or of its
// SPIFFE ID) must put on the CRL, since a key stolen before a renewal
// keeps working with the certificate it came with.
type IssuedCert struct {
	// Serial is the leaf's serial, lower-case hex.
	Serial string
	// AuthorityKeyID is the leaf's authority key identifier: the
	// SubjectKeyId of the certificate that signed it, which tells which
	// authority's CRL the serial belongs on. Nil when the leaf has none.
	AuthorityKeyID []byte
	NotAfter       time.Time
	// Digest is the SHA-256 of the leaf's DER: presented again with
	// proof of its key, it is this very certificate (see issuedExactly).
	Digest [sha256.Size]byte
}

// issuedHistory keeps, per workload, the certificates issued to it that
// have not expired: at most MaxIssuedPerWorkload, the oldest dropped
// first. Expired ones are dropped when the workload's list is touched;
// workloads gone from the mesh when the lists have doubled since the
// last pruning (as Server.record does), so neither leaf churn nor pod
// churn grows it without bound. Its zero value is ready to use; it is
// safe for concurrent use.
type issuedHistory struct {
	mu      sync.Mutex
	by      map[string][]IssuedCert
	pruneAt int
}

// add records leaf as issued to workload at now.
func (h *issuedHistory) add(store *model.Store, workload string, leaf *x509.Certificate, now time.Time) {
	if leaf == nil {
		return
	}
	c := IssuedCert{Serial: leaf.SerialNumber.Text(16), AuthorityKeyID: slices.Clone(leaf.AuthorityKeyId), NotAfter: leaf.NotAfter,
		Digest: sha256.Sum256(leaf.Raw)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.by == nil {
		h.by = map[string][]IssuedCert{}
	}
	list := append(unexpired(h.by[workload], now), c)
	if n := len(list) - MaxIssuedPerWorkload; n > 0 {
		list = slices.Delete(list, 0, n)
	}
	h.by[workload] = list
	if len(h.by) > h.pruneAt {
		h.pruneLocked(store, now)
	}
}

// get returns a copy of the certificates of workload not expired at now,
// oldest first.
func (h *issuedHistory) get(workload string, now time.Time) []IssuedCert {
	h.mu.Lock()
	defer h.mu.Unlock()
	list := unexpired(h.by[workload], now)
	if len(list) == 0 {
		delete(h.by, workload)
		return nil
	}
	h.by[workload] = list
	return slices.Clone(list)
}

// issuedExactly reports whether this server issued leaf itself, byte for
// byte, to workload and it has not expired at now. A certificate is
// public, but a caller presenting it proved in the handshake that it
// holds the key in it: the workload's own key, which no one could put in
// a certificate of this server's making but this server.
func (h *issuedHistory) issuedExactly(workload string, leaf *x509.Certificate, now time.Time) bool {
	d := sha256.Sum256(leaf.Raw)
	for _, c := range h.get(workload, now) {
		if c.Digest == d {
			return true
		}
	}
	return false
}

// pruneLocked drops the workloads gone from the mesh and the expired
// certificates of the others.
func (h *issuedHistory) pruneLocked(store *model.Store, now time.Time) {
	snap := store.Snapshot()
	for key, list := range h.by {
		ns, name, _ := strings.Cut(key, "/")
		if list = unexpired(list, now); len(list) == 0 || snap.Workload(ns, name) == nil {
			delete(h.by, key)
			continue
		}
		h.by[key] = list
	}
	h.pruneAt = max(64, 2*len(h.by))
}

// unexpired returns list without the certificates expired at now (in
// place: list is the caller's to replace).
func unexpired(list []IssuedCert, now time.Time) []IssuedCert {
	return slices.DeleteFunc(list, func(c IssuedCert) bool { return !now.Before(c.NotAfter) })
}

// IssuedTo returns the certificates this server issued to workload
// (namespace/name) that have not expired, oldest first: every one, not
// only the latest, up to MaxIssuedPerWorkload. The slice is the caller's.
// Kept in memory only: a restarted control plane knows the certificates
// issued since it started, and each replica those it issued.
func (s *Server) IssuedTo(workload string) []IssuedCert {
	return s.history.get(workload, s.cfg.Now())
}
