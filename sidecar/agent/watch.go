package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
)

// errRenewed ends a bundle stream opened with a certificate since
// replaced: the stream's TLS carries the old one, which the control plane
// reports and which expires.
var errRenewed = errors.New("renewed: watch again with the new certificate")

// watchBundle keeps a WatchTrustBundle stream to the control plane until
// ctx ends, authenticated with the current certificate: it opens a new
// one after each renewal, and after a failure with backoff.
func (a *Agent) watchBundle(ctx context.Context) {
	retry := backoff{base: time.Second, rand: a.random}
	for ctx.Err() == nil {
		delivered, err := a.watchOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if delivered {
			retry.reset() // it worked for a while: this is a new series of failures
		}
		if errors.Is(err, errRenewed) {
			continue
		}
		limit := time.Minute
		if status.Code(err) == codes.Unimplemented {
			limit = 5 * time.Minute // a control plane from before the stream
		}
		wait := retry.wait(err, limit)
		a.log.Warn("trust bundle stream failed; watching again", "err", err, "in", wait.Round(time.Millisecond))
		if !a.sleep(ctx, wait) {
			return
		}
	}
}

// watchOnce runs one stream until it fails, the certificate is renewed
// or ctx ends, and says whether the stream delivered a bundle. Every
// bundle is answered with what the agent holds and what its Envoy has
// acknowledged, and so is every later acknowledgement of Envoy's.
func (a *Agent) watchOnce(ctx context.Context) (delivered bool, err error) {
	a.mu.Lock()
	svid, renewed := a.svid, a.certCh
	a.mu.Unlock()
	conn, err := grpc.NewClient(a.cfg.ControlPlane, grpc.WithTransportCredentials(
		credentials.NewTLS(spiffetls.ClientConfig(svid, a.anchors(), a.cfg.ControlPlaneID))),
		// The stream is quiet for hours between bundles: pings find a
		// control plane that went away without closing it (a node lost,
		// a NAT that forgot the flow), so the agent reconnects instead of
		// waiting on a dead stream. Every 30s is what the control plane's
		// keepalive policy allows (at most every 10s).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cav1.NewCertificateServiceClient(conn).WatchTrustBundle(ctx)
	if err != nil {
		return false, err
	}
	bundles := make(chan *cav1.TrustBundle)
	recvErr := make(chan error, 1)
	go func() {
		for {
			b, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case bundles <- b:
			case <-ctx.Done():
				return
			}
		}
	}()

	// held is the highest sequence sent on this stream whose bundle the
	// agent holds (installed from it, or held already with the same
	// sequence and content): acks never go beyond it. A bundle the agent
	// did not take (older than the one held: a lagging replica, or one
	// whose stored state was restored from a backup; or refused) is not
	// acknowledged, so the replica sees the proxy as behind rather than
	// holding a bundle, and the CRLs in it, that it never installed. (A
	// replica that lags catches up within its next poll and sends the
	// sequence the agent holds.)
	var held uint64
	var lastAck *cav1.TrustBundleAck
	ack := func() error {
		agentSeq, proxySeq := a.BundleSequence()
		m := &cav1.TrustBundleAck{Sequence: min(agentSeq, held), ProxySequence: min(proxySeq, held)}
		if lastAck != nil && m.GetSequence() == lastAck.GetSequence() && m.GetProxySequence() == lastAck.GetProxySequence() {
			return nil
		}
		if err := stream.Send(m); err != nil {
			return err
		}
		lastAck = m
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return delivered, ctx.Err()
		case <-renewed:
			return delivered, errRenewed
		case err := <-recvErr:
			return delivered, err
		case <-a.sds.BundleAcked():
			if delivered {
				if err := ack(); err != nil {
					return delivered, err
				}
			}
		case b := <-bundles:
			delivered = true
			if err := a.takeBundle(b, svid); err != nil {
				// Not installed: the ack says what this stream sent that
				// is still held.
				a.log.Error("trust bundle refused", "sequence", b.GetSequence(), "err", err)
			}
			if a.holds(b) {
				held = max(held, b.GetSequence())
			}
			if err := ack(); err != nil {
				return delivered, err
			}
		}
	}
}

// takeBundle installs a pushed bundle if it is newer than the one held,
// and schedules the renewals it calls for: at once if the current leaf
// does not chain to its roots, and within its reissue window, once per
// bundle, if the authority that signs now did not sign the leaf.
func (a *Agent) takeBundle(m *cav1.TrustBundle, svid *x509svid.SVID) error {
	roots, err := parseCerts(m.GetRoots())
	if err != nil {
		return fmt.Errorf("roots: %w", err)
	}
	var signing *x509.Certificate
	if len(m.GetSigningCa()) > 0 {
		if signing, err = x509.ParseCertificate(m.GetSigningCa()); err != nil {
			return fmt.Errorf("signing_ca: %w", err)
		}
	}
	a.mu.Lock()
	held := a.bundleSeq
	a.mu.Unlock()
	if m.GetSequence() < held {
		a.log.Debug("trust bundle older than the one held, ignored", "sequence", m.GetSequence(), "held", held)
		return nil
	}
	if m.GetSequence() > held {
		if err := a.installBundle(heldBundle{seq: m.GetSequence(), roots: roots, crls: m.GetCrls()}); err != nil {
			return err
		}
	}
	// The same sequence as held (a renewal's answer brought it first) is
	// not installed again, but says which authority signs.
	a.mu.Lock()
	a.signing, a.reissueWithin = signing, time.Duration(m.GetReissueWithinMs())*time.Millisecond
	scheduled := a.reissueSet && a.reissuedFor >= m.GetSequence()
	leaf := a.svid.Certificates[0]
	current := a.svid
	a.mu.Unlock()
	if current != svid {
		// Renewed since the stream opened: the stream ends, and the next
		// one's first bundle looks at the new leaf.
		return nil
	}
	if !chainsTo(current, roots) {
		a.log.Warn("the certificate does not chain to the new trust bundle; renewing now", "sequence", m.GetSequence(),
			"serial", leaf.SerialNumber.Text(16))
		a.renewSoon(0)
		return nil
	}
	if !crlCovers(current, roots, m.GetCrls()) {
		// Its authority was revoked (or removed by force while its root
		// stays): every peer refuses the leaf now, so waiting within the
		// re-issue window would only prolong the outage.
		a.log.Warn("the trust bundle carries no CRL of the certificate's issuer, so every peer refuses it; renewing now",
			"sequence", m.GetSequence(), "serial", leaf.SerialNumber.Text(16))
		a.renewSoon(0)
		return nil
	}
	if signing == nil || scheduled || issuedBy(leaf, signing) {
		return nil
	}
	window := time.Duration(m.GetReissueWithinMs()) * time.Millisecond
	delay := time.Duration(a.random() * float64(window))
	a.mu.Lock()
	a.reissuedFor, a.reissueSet = m.GetSequence(), true
	a.mu.Unlock()
	a.log.Info("another authority signs now; renewing onto it", "sequence", m.GetSequence(), "in", delay.Round(time.Millisecond),
		"window", window, "serial", leaf.SerialNumber.Text(16))
	a.renewSoon(delay)
	return nil
}

// holds says whether the bundle the agent holds is m: the same sequence,
// roots and CRLs. The same sequence alone is not enough: a control plane
// whose stored state was restored from a backup numbers another bundle
// with a sequence an agent may hold already.
func (a *Agent) holds(m *cav1.TrustBundle) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.bundleSeq != m.GetSequence() || len(a.bundle) != len(m.GetRoots()) || len(a.crls) != len(m.GetCrls()) {
		return false
	}
	for i, r := range a.bundle {
		if !bytes.Equal(r.Raw, m.GetRoots()[i]) {
			return false
		}
	}
	for i, c := range a.crls {
		if !bytes.Equal(c, m.GetCrls()[i]) {
			return false
		}
	}
	return true
}

// chainsTo says whether the certificate's chain leads to one of roots,
// at a moment when every certificate of the chain is valid (this is
// about the chain, not the clock).
func chainsTo(svid *x509svid.SVID, roots []*x509.Certificate) bool {
	at := svid.Certificates[0].NotBefore
	for _, c := range svid.Certificates {
		if c.NotBefore.After(at) {
			at = c.NotBefore
		}
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range svid.Certificates[1:] {
		inter.AddCert(c)
	}
	_, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: at.Add(time.Second)})
	return err == nil
}

// crlCovers says whether a proxy holding crls accepts the certificate's
// issuer: with no CRL at all, yes; otherwise only if one of crls is
// signed by the key that signed the leaf (Envoy, with
// only_verify_leaf_cert_crl, refuses a leaf whose issuer has no CRL).
// An issuer that cannot be found counts as covered: chainsTo decides
// about those.
func crlCovers(svid *x509svid.SVID, roots []*x509.Certificate, crls [][]byte) bool {
	if len(crls) == 0 {
		return true
	}
	leaf := svid.Certificates[0]
	var issuer *x509.Certificate
	for _, c := range append(slices.Clone(svid.Certificates[1:]), roots...) {
		if leaf.CheckSignatureFrom(c) == nil {
			issuer = c
			break
		}
	}
	if issuer == nil {
		return true
	}
	for _, der := range crls {
		if rl, err := x509.ParseRevocationList(der); err == nil && rl.CheckSignatureFrom(issuer) == nil {
			return true
		}
	}
	return false
}

// issuedBy says whether signing issued leaf: by key identifier when both
// have one, else by the signature.
func issuedBy(leaf, signing *x509.Certificate) bool {
	if len(leaf.AuthorityKeyId) > 0 && len(signing.SubjectKeyId) > 0 {
		return bytes.Equal(leaf.AuthorityKeyId, signing.SubjectKeyId)
	}
	return leaf.CheckSignatureFrom(signing) == nil
}

// checkCRLTimes refuses CRLs that are not valid at now: Envoy would
// refuse every leaf their issuers signed. A CRL that does not parse is
// left to package sds, which refuses it.
func checkCRLTimes(crls [][]byte, now time.Time) error {
	var errs []error
	for i, der := range crls {
		c, err := x509.ParseRevocationList(der)
		if err != nil {
			continue
		}
		switch {
		case c.ThisUpdate.After(now):
			errs = append(errs, fmt.Errorf("crls[%d] (issuer %s): thisUpdate %s is ahead of this host's clock (%s)",
				i, c.Issuer, c.ThisUpdate.Format(time.RFC3339), now.UTC().Format(time.RFC3339)))
		case !c.NextUpdate.IsZero() && !c.NextUpdate.After(now):
			errs = append(errs, fmt.Errorf("crls[%d] (issuer %s): expired at %s (nextUpdate)", i, c.Issuer, c.NextUpdate.Format(time.RFC3339)))
		}
	}
	return errors.Join(errs...)
}
