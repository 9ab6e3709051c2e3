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

// issuedHistory is this server's one record of what it issued: per
// workload, the certificates still valid, at most MaxIssuedPerWorkload,
// the oldest dropped first, and always the latest, even expired (what
// Certificates reports: a workload whose latest certificate expired is
// not renewing, which an operator must see). Expired ones go when the
// workload's list is touched; workloads gone from the mesh when the lists
// have doubled since the last pruning and whenever Certificates is read,
// so neither leaf churn nor pod churn grows it without bound. Its zero
// value is ready to use; it is safe for concurrent use.
type issuedHistory struct {
	mu      sync.Mutex
	by      map[string][]issuedEntry
	pruneAt int
}

// issuedEntry is one certificate issued: as reported (Certificates) and
// as revocation needs it (IssuedTo).
type issuedEntry struct {
	rec  Issued
	cert IssuedCert
}

// add records leaf as issued, as rec says.
func (h *issuedHistory) add(store *model.Store, rec Issued, leaf *x509.Certificate, now time.Time) {
	e := issuedEntry{rec: rec, cert: IssuedCert{Serial: leaf.SerialNumber.Text(16), AuthorityKeyID: slices.Clone(leaf.AuthorityKeyId),
		NotAfter: leaf.NotAfter, Digest: sha256.Sum256(leaf.Raw)}}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.by == nil {
		h.by = map[string][]issuedEntry{}
	}
	list := append(unexpired(h.by[rec.Workload], now), e)
	if n := len(list) - MaxIssuedPerWorkload; n > 0 {
		list = slices.Delete(list, 0, n)
	}
	h.by[rec.Workload] = list
	if len(h.by) > h.pruneAt {
		h.pruneLocked(store, now)
	}
}

// get returns the certificates of workload not expired at now, oldest
// first; the slice is the caller's.
func (h *issuedHistory) get(workload string, now time.Time) []IssuedCert {
	h.mu.Lock()
	defer h.mu.Unlock()
	list, ok := h.by[workload]
	if !ok {
		return nil
	}
	list = unexpired(list, now)
	h.by[workload] = list
	var out []IssuedCert
	for _, e := range list {
		if now.Before(e.cert.NotAfter) {
			out = append(out, e.cert)
		}
	}
	return out
}

// latest returns the latest certificate of every workload still in the
// mesh.
func (h *issuedHistory) latest(store *model.Store, now time.Time) []Issued {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pruneLocked(store, now)
	out := make([]Issued, 0, len(h.by))
	for _, list := range h.by {
		out = append(out, list[len(list)-1].rec)
	}
	return out
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
// certificates of the others (but their latest).
func (h *issuedHistory) pruneLocked(store *model.Store, now time.Time) {
	snap := store.Snapshot()
	for key, list := range h.by {
		ns, name, _ := strings.Cut(key, "/")
		if snap.Workload(ns, name) == nil {
			delete(h.by, key)
			continue
		}
		h.by[key] = unexpired(list, now)
	}
	h.pruneAt = max(64, 2*len(h.by))
}

// unexpired returns list without the certificates expired at now, but
// for the latest, which is kept whatever its expiry (in place: list is
// the caller's to replace).
func unexpired(list []issuedEntry, now time.Time) []issuedEntry {
	if len(list) == 0 {
		return list
	}
	last := list[len(list)-1]
	list = slices.DeleteFunc(list[:len(list)-1], func(e issuedEntry) bool { return !now.Before(e.cert.NotAfter) })
	return append(list, last)
}

// IssuedTo returns the certificates this server issued to workload
// (namespace/name) that have not expired, oldest first: every one, not
// only the latest, up to MaxIssuedPerWorkload. The slice is the caller's.
// Kept in memory only: a restarted control plane knows the certificates
// issued since it started, and each replica those it issued.
func (s *Server) IssuedTo(workload string) []IssuedCert {
	return s.history.get(workload, s.cfg.Now())
}
