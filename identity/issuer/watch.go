package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/ca/trust"
	"github.com/bulwarkmesh/bulwark/internal/bounded"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
)

// BundleSource is where the issuer gets the trust bundle it hands out.
type BundleSource interface {
	// Bundle returns the current bundle and a channel closed when it
	// changes. The bundle is the caller's to read, never to modify.
	Bundle() (trust.Bundle, <-chan struct{})
}

// RevokedFunc says whether a caller is revoked, and why. serial is the
// lower-case hex serial of the certificate the caller presented ("" when
// it presented none); id is the SPIFFE ID the caller has or would get
// (zero when not known yet); workload is "namespace/name". It may be
// called more than once for one request, and must be quick and safe for
// concurrent use.
type RevokedFunc func(serial string, id spiffeid.ID, workload string) (reason string, revoked bool)

// BundleReport is what a workload's agent last reported over
// WatchTrustBundle.
type BundleReport struct {
	// Workload is the namespace/name the stream's certificate names,
	// never one the agent sent.
	Workload string
	// AgentSeq is the bundle sequence the agent has installed; ProxySeq
	// the one its Envoy has acknowledged. Both 0 until the first ack.
	AgentSeq, ProxySeq uint64
	// Leaf is the certificate the stream was opened with.
	Leaf *x509.Certificate
	// Peer is the stream's remote address.
	Peer string
	// Since is when the stream opened; Updated when it last reported.
	Since, Updated time.Time
	// Connected is false once the stream has ended; the report is kept
	// for ReportGrace after that, then dropped.
	Connected bool
}

// staticBundle is the bundle of a Server without a BundleSource: the
// CA's roots, at sequence 0, never changing.
type staticBundle struct{ s Signer }

func (b staticBundle) Bundle() (trust.Bundle, <-chan struct{}) {
	return trust.Bundle{TrustDomain: b.s.TrustDomain(), Roots: b.s.Roots()}, nil
}

// errRevoked marks a refusal because the caller is revoked, for the
// requests metric.
type errRevoked struct{ st *status.Status }

func (e errRevoked) Error() string              { return e.st.Err().Error() }
func (e errRevoked) GRPCStatus() *status.Status { return e.st }

// checkRevoked refuses a revoked caller, naming the reason.
func (s *Server) checkRevoked(serial string, id spiffeid.ID, workload string) error {
	if s.cfg.Revoked == nil {
		return nil
	}
	reason, revoked := s.cfg.Revoked(serial, id, workload)
	if !revoked {
		return nil
	}
	what := "workload " + quote(workload)
	if serial != "" {
		what += ", certificate " + serial
	}
	return errRevoked{status.Newf(codes.PermissionDenied, "%s: revoked: %s", what, bounded.Text(reason, bounded.Message))}
}

// VouchFunc says whether the authority that signed a caller's
// certificate may still vouch for it: nil if so. A certificate signed by
// an authority that was revoked (its key may be in other hands, who can
// mint a leaf for any workload) or removed from the bundle is no
// credential, whatever it names. Quick and safe for concurrent use.
type VouchFunc func(leaf *x509.Certificate) error

// checkVouched refuses a caller whose certificate's authority may no
// longer vouch for it.
func (s *Server) checkVouched(leaf *x509.Certificate) error {
	if s.cfg.Vouches == nil || leaf == nil {
		return nil
	}
	err := s.cfg.Vouches(leaf)
	if err == nil {
		return nil
	}
	// A certificate this server issued itself, byte for byte, still
	// proves its workload: whoever holds a revoked authority's key can
	// mint a certificate naming the workload, but not this one, whose
	// key is the workload's. So after an emergency rotation the
	// workloads renew onto the new authority by themselves, as long as
	// the replica that issued their certificate still runs; the others
	// attest again.
	if w, ok := ca.WorkloadOf(leaf); ok && s.history.issuedExactly(w.String(), leaf, s.cfg.Now()) {
		s.log.Info("certificate of an authority that may no longer vouch accepted: this control plane issued exactly it",
			"workload", w.String(), "serial", leaf.SerialNumber.Text(16), "why", err.Error())
		return nil
	}
	return errRevoked{status.Newf(codes.PermissionDenied,
		"certificate %s is no credential any more: %s; get a new one with a ServiceAccount token or a new join token",
		leaf.SerialNumber.Text(16), bounded.Text(err.Error(), bounded.Message))}
}

// watchers counts the open WatchTrustBundle streams and keeps the
// reports.
type watchers struct {
	max  int
	mu   sync.Mutex
	open int
	// byWorkload holds a workload's open streams, oldest first, and the
	// report of its last stream once none is open.
	byWorkload map[string]*workloadWatch
	gauge      prometheus.Gauge
	acks       *prometheus.CounterVec
}

type workloadWatch struct {
	open  []*BundleReport
	ended *BundleReport // the last stream's report, once none is open
}

func newWatchers(max int) *watchers {
	return &watchers{max: max, byWorkload: map[string]*workloadWatch{},
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_trust_bundle_watchers",
			Help: "Open WatchTrustBundle streams: agents receiving the trust bundle as it changes.",
		}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_trust_bundle_acks_total",
			Help: "Trust bundle acknowledgements from agents, by result: ok, or refused as beyond the latest bundle sent (beyond) or too large (too_large).",
		}, []string{"result"}),
	}
}

// add registers a stream, refusing one past the caps.
func (w *watchers) add(r *BundleReport) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	ww := w.byWorkload[r.Workload]
	if ww != nil && len(ww.open) >= MaxBundleWatchesPerWorkload {
		return status.Errorf(codes.ResourceExhausted, "workload %s already watches the trust bundle on %d streams", r.Workload, len(ww.open))
	}
	if w.max > 0 && w.open >= w.max {
		return status.Errorf(codes.ResourceExhausted, "the control plane serves the trust bundle to %d streams, its limit; retry", w.open)
	}
	if ww == nil {
		ww = &workloadWatch{}
		w.byWorkload[r.Workload] = ww
	}
	ww.open = append(ww.open, r)
	ww.ended = nil
	w.open++
	w.gauge.Set(float64(w.open))
	return nil
}

// remove unregisters a stream ended at now.
func (w *watchers) remove(r *BundleReport, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ww := w.byWorkload[r.Workload]
	if ww == nil {
		return
	}
	i := slices.Index(ww.open, r)
	if i < 0 {
		return
	}
	ww.open = slices.Delete(ww.open, i, i+1)
	w.open--
	w.gauge.Set(float64(w.open))
	if len(ww.open) == 0 {
		ended := *r
		ended.Connected = false
		ended.Updated = now
		ww.ended = &ended
	}
	w.pruneLocked(now)
}

// update records an ack on a stream.
func (w *watchers) update(r *BundleReport, agent, proxy uint64, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r.AgentSeq, r.ProxySeq, r.Updated = agent, proxy, now
}

// pruneLocked drops the reports of streams ended more than ReportGrace
// ago.
func (w *watchers) pruneLocked(now time.Time) {
	for k, ww := range w.byWorkload {
		if len(ww.open) == 0 && (ww.ended == nil || now.Sub(ww.ended.Updated) > ReportGrace) {
			delete(w.byWorkload, k)
		}
	}
}

func (w *watchers) reports(now time.Time) []BundleReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pruneLocked(now)
	out := make([]BundleReport, 0, len(w.byWorkload))
	for _, ww := range w.byWorkload {
		if n := len(ww.open); n > 0 {
			// The newest stream is the agent's current one: an older one
			// is closing after a renewal.
			out = append(out, *ww.open[n-1])
		} else {
			out = append(out, *ww.ended)
		}
	}
	slices.SortFunc(out, func(a, b BundleReport) int { return strings.Compare(a.Workload, b.Workload) })
	return out
}

// BundleReports returns the latest report of every workload whose agent
// watches the trust bundle, or did within ReportGrace, sorted by
// workload. With two streams open for a workload (an agent reconnecting
// after a renewal), the newer one's.
func (s *Server) BundleReports() []BundleReport { return s.watch.reports(s.cfg.Now()) }

// WatchTrustBundle sends the caller the trust bundle now and at every
// change, and records what it acknowledges. The caller must present a
// certificate that names its workload; the stream ends when that
// certificate expires or is revoked.
func (s *Server) WatchTrustBundle(stream cav1.CertificateService_WatchTrustBundleServer) error {
	ctx := stream.Context()
	var workload string
	err := s.watchTrustBundle(ctx, stream, &workload)
	if err == nil || ctx.Err() != nil {
		return nil // the caller left, or the server is stopping
	}
	result := status.Code(err).String()
	if errors.As(err, new(errRevoked)) {
		result = resultRevoked
	}
	err = boundStatus(err)
	s.requests.WithLabelValues(methodWatch, result).Inc()
	if status.Code(err) != codes.ResourceExhausted {
		s.log.Warn("trust bundle stream refused or ended", "workload", workload, "err", status.Convert(err).Message())
	}
	return err
}

func (s *Server) watchTrustBundle(ctx context.Context, stream cav1.CertificateService_WatchTrustBundleServer, workload *string) error {
	leaf := peerLeaf(ctx)
	id, err := spiffetls.PeerID(ctx)
	if leaf == nil || err != nil {
		return status.Error(codes.Unauthenticated, "present your current certificate to watch the trust bundle")
	}
	w, ok := ca.WorkloadOf(leaf)
	if !ok {
		return status.Errorf(codes.PermissionDenied, "your certificate (%s) names no workload; only a workload's agent watches the trust bundle", id)
	}
	*workload = w.String() // from a certificate this CA signed: short and plain
	serial := leaf.SerialNumber.Text(16)
	if err := s.checkRevoked(serial, id, *workload); err != nil {
		return err
	}
	if err := s.checkVouched(leaf); err != nil {
		return err
	}
	now := s.cfg.Now()
	if !now.Before(leaf.NotAfter) {
		return status.Errorf(codes.Unauthenticated, "your certificate %s expired at %s", serial, leaf.NotAfter.Format(time.RFC3339))
	}
	report := &BundleReport{Workload: *workload, Leaf: leaf, Since: now, Updated: now, Connected: true}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		report.Peer = p.Addr.String()
	}
	if err := s.watch.add(report); err != nil {
		return err
	}
	defer func() { s.watch.remove(report, s.cfg.Now()) }()
	s.requests.WithLabelValues(methodWatch, "OK").Inc()

	acks := make(chan *cav1.TrustBundleAck)
	recvErr := make(chan error, 1)
	go func() {
		for {
			ack, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case acks <- ack:
			case <-ctx.Done():
				return
			}
		}
	}()
	// The certificate's expiry ends the stream even if nothing else
	// happens; each send checks it too.
	expiry := time.NewTimer(leaf.NotAfter.Sub(now))
	defer expiry.Stop()

	// current is the sequence sent last; highest the highest sent, which
	// bounds what the agent may acknowledge.
	var current, highest uint64
	first := true
	for {
		b, changed := s.bundles.Bundle()
		if first || b.Sequence != current {
			if !first {
				// A change of the bundle may be a revocation.
				if err := s.checkRevoked(serial, id, *workload); err != nil {
					return err
				}
				if err := s.checkVouched(leaf); err != nil {
					return err
				}
			}
			if !s.cfg.Now().Before(leaf.NotAfter) {
				return status.Errorf(codes.Unauthenticated, "your certificate %s expired at %s; renew and watch again", serial, leaf.NotAfter.Format(time.RFC3339))
			}
			if err := stream.Send(bundleMessage(b)); err != nil {
				return err
			}
			current, highest, first = b.Sequence, max(highest, b.Sequence), false
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled {
				return nil // the agent closed the stream
			}
			return err
		case <-expiry.C:
			return status.Errorf(codes.Unauthenticated, "your certificate %s expired at %s; renew and watch again", serial, leaf.NotAfter.Format(time.RFC3339))
		case <-changed:
		case ack := <-acks:
			switch {
			case proto.Size(ack) > maxAckBytes:
				s.watch.acks.WithLabelValues("too_large").Inc()
				return status.Errorf(codes.InvalidArgument, "ack: %d bytes, more than the %d two sequence numbers need", proto.Size(ack), maxAckBytes)
			case ack.GetSequence() > highest || ack.GetProxySequence() > highest:
				s.watch.acks.WithLabelValues("beyond").Inc()
				s.log.Debug("trust bundle ack beyond the latest bundle sent, ignored", "workload", *workload,
					"sequence", ack.GetSequence(), "proxy_sequence", ack.GetProxySequence(), "sent", highest)
			default:
				s.watch.acks.WithLabelValues("ok").Inc()
				s.watch.update(report, ack.GetSequence(), ack.GetProxySequence(), s.cfg.Now())
			}
		}
	}
}

// maxAckBytes bounds an ack: two varints and no more (unknown fields
// included).
const maxAckBytes = 32

func bundleMessage(b trust.Bundle) *cav1.TrustBundle {
	m := &cav1.TrustBundle{Sequence: b.Sequence, Crls: b.CRLs, ReissueWithinMs: b.ReissueWithin.Milliseconds()}
	for _, r := range b.Roots {
		m.Roots = append(m.Roots, r.Raw)
	}
	if b.Signing != nil {
		m.SigningCa = b.Signing.Raw
	}
	return m
}

// Labels of the requests metric for what is not a signing request's
// status code.
const (
	methodWatch   = "watch"
	resultRevoked = "revoked"
)
