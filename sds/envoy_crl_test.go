package sds

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEnvoyEnforcesTheCRLs is what the design of revocation rests on:
// with the bundle's CRLs in the validation context and
// only_verify_leaf_cert_crl, the real Envoy refuses, as server and as
// client, a leaf whose serial its issuer's CRL lists, and a leaf whose
// issuer has no CRL in the set (so leaving an authority's CRL out of the
// bundle distrusts it while its root stays), and accepts the others,
// including those of a second intermediate that has the same subject
// as the first (an intermediate rotated under the same root).
func TestEnvoyEnforcesTheCRLs(t *testing.T) {
	root := newRoot(t, "test root")
	inter := root.intermediate(t, "test intermediate")
	twin := root.intermediate(t, "test intermediate") // same subject, another key
	uncovered := root.intermediate(t, "uncovered intermediate")

	envoyLeaf := inter.leaf(t, testTrustDomain+"ns/test/sa/envoy")
	good := inter.leaf(t, testTrustDomain+"ns/test/sa/good")
	revoked := inter.leaf(t, testTrustDomain+"ns/test/sa/revoked")
	twinLeaf := twin.leaf(t, testTrustDomain+"ns/test/sa/twin")
	twinRevoked := twin.leaf(t, testTrustDomain+"ns/test/sa/twin-revoked")
	orphan := uncovered.leaf(t, testTrustDomain+"ns/test/sa/orphan")

	crls := [][]byte{inter.crl(t, 1, revoked.serial()), twin.crl(t, 1, twinRevoked.serial())}
	r := startEnvoyRig(t, func(s *Server) {
		if err := s.UpdateCertificate(envoyLeaf.chain, envoyLeaf.key); err != nil {
			t.Fatal(err)
		}
		if err := s.UpdateBundle(1, []*x509.Certificate{root.cert}, crls); err != nil {
			t.Fatal(err)
		}
	})
	r.waitReady(t)
	waitAcked(t, r.SDS, 1)

	for _, tc := range []struct {
		name   string
		leaf   leaf
		accept bool
	}{
		{"unrevoked leaf", good, true},
		{"revoked leaf", revoked, false},
		{"leaf of a second intermediate with the same subject", twinLeaf, true},
		{"revoked leaf of that second intermediate", twinRevoked, false},
		{"leaf whose issuer has no CRL in the set", orphan, false},
	} {
		for dir, call := range map[string]func(leaf) string{
			"inbound":  func(l leaf) string { return r.inbound(l.tls()) },
			"outbound": func(l leaf) string { return r.outbound(l.tls()) },
		} {
			got := call(tc.leaf)
			if tc.accept && got != "ok" {
				t.Errorf("%s, %s: refused (%s), want accepted", tc.name, dir, got)
			}
			if !tc.accept && got == "ok" {
				t.Errorf("%s, %s: accepted, want refused", tc.name, dir)
			}
			t.Logf("%s, %s: %s", tc.name, dir, got)
		}
	}

	// Revoking is a new bundle: the leaf accepted a moment ago is refused
	// once Envoy has acknowledged it, even by an upstream with which
	// Envoy holds a TLS session it could resume (a new bundle is a new
	// TLS context in Envoy, without the old one's sessions).
	r.UpstreamTickets.Store(true)
	for range 2 {
		if got := r.outbound(good.tls()); got != "ok" {
			t.Fatalf("outbound with session tickets: %s", got)
		}
	}
	if !r.Resumed.Load() {
		t.Fatal("Envoy did not resume its TLS session with the upstream: the check below would prove nothing")
	}
	crls = [][]byte{inter.crl(t, 2, revoked.serial(), good.serial()), twin.crl(t, 2, twinRevoked.serial())}
	if err := r.SDS.UpdateBundle(2, []*x509.Certificate{root.cert}, crls); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, r.SDS, 2)
	if got := r.inbound(good.tls()); got == "ok" {
		t.Error("a leaf revoked in bundle 2 is still accepted inbound after Envoy acknowledged bundle 2")
	}
	if got := r.outbound(good.tls()); got == "ok" {
		t.Error("a leaf revoked in bundle 2 is still accepted outbound after Envoy acknowledged bundle 2")
	}
}

// TestEnvoyAcksTheBundle: AckedBundle moves only when the real Envoy has
// acknowledged the version carrying the bundle; the CRL is in the
// validation context Envoy loaded; a bundle Envoy refuses is refused
// once (not resent in a loop), leaves Envoy with the bundle it had, and
// leaves AckedBundle where it was.
func TestEnvoyAcksTheBundle(t *testing.T) {
	root := newRoot(t, "test root")
	inter := root.intermediate(t, "test intermediate")
	envoyLeaf := inter.leaf(t, testTrustDomain+"ns/test/sa/envoy")
	client := inter.leaf(t, testTrustDomain+"ns/test/sa/client")
	r := startEnvoyRig(t, func(s *Server) {
		if err := s.UpdateCertificate(envoyLeaf.chain, envoyLeaf.key); err != nil {
			t.Fatal(err)
		}
		if err := s.UpdateBundle(1, []*x509.Certificate{root.cert}, nil); err != nil {
			t.Fatal(err)
		}
		if got := s.AckedBundle(); got != 0 {
			t.Errorf("AckedBundle before Envoy asked = %d, want 0", got)
		}
	})
	r.waitReady(t)
	waitAcked(t, r.SDS, 1)
	if _, vc := r.rootsSecret(t); vc.GetCrl() != nil || vc.GetOnlyVerifyLeafCertCrl() {
		t.Errorf("bundle 1 has no CRL, but Envoy's validation context has crl %v, only_verify_leaf_cert_crl %v", vc.GetCrl() != nil, vc.GetOnlyVerifyLeafCertCrl())
	}

	// Envoy stopped: the bundle is sent but not acknowledged.
	if err := syscall.Kill(r.Envoy.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	revoked := inter.leaf(t, testTrustDomain+"ns/test/sa/revoked")
	crl := inter.crl(t, 2, revoked.serial())
	if err := r.SDS.UpdateBundle(2, []*x509.Certificate{root.cert}, [][]byte{crl}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := r.SDS.AckedBundle(); got != 1 {
		t.Errorf("AckedBundle = %d while Envoy was stopped, want 1", got)
	}
	if err := syscall.Kill(r.Envoy.PID(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, r.SDS, 2)
	version, vc := r.rootsSecret(t)
	if got := string(vc.GetCrl().GetInlineBytes()); !strings.Contains(got, "-----BEGIN X509 CRL-----") {
		t.Errorf("Envoy's validation context at %s has crl %q, want the PEM CRL", version, got)
	}
	if !vc.GetOnlyVerifyLeafCertCrl() {
		t.Errorf("Envoy's validation context at %s: only_verify_leaf_cert_crl false", version)
	}
	if got := r.inbound(client.tls()); got != "ok" {
		t.Fatalf("bundle 2: a leaf its CRL does not list is refused: %s", got)
	}
	if got := r.inbound(revoked.tls()); got == "ok" {
		t.Fatal("bundle 2: a leaf its CRL lists is accepted")
	}

	// A CRL Envoy cannot parse: refused, once, and Envoy keeps bundle 2.
	nacked := r.SDS.Nacked()
	bad := []byte("-----BEGIN X509 CRL-----\nMIIBAAAA\n-----END X509 CRL-----\n")
	if err := r.SDS.setBundle(3, []byte(rootsPEM(root.cert)), bad); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for r.SDS.Nacked() == nacked {
		if time.Now().After(deadline) {
			t.Fatal("Envoy did not refuse a CRL that does not parse within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if n := r.SDS.Nacked() - nacked; n != 1 {
		t.Errorf("Envoy refused the bad bundle %d times in a second, want once (no resend loop)", n)
	}
	if got := r.SDS.AckedBundle(); got != 2 {
		t.Errorf("AckedBundle = %d after Envoy refused bundle 3, want 2", got)
	}
	// (Envoy's config_dump shows the refused version as the active
	// secret: it stored the secret before its TLS contexts refused it.
	// What Envoy enforces is the bundle it had: bundle 2's CRL.)
	if got := r.inbound(client.tls()); got != "ok" {
		t.Errorf("after refusing bundle 3, Envoy refuses a good leaf: %s", got)
	}
	if got := r.inbound(revoked.tls()); got == "ok" {
		t.Error("after refusing bundle 3, Envoy accepts a leaf bundle 2's CRL lists: it lost the bundle it had")
	}

	// The next good bundle goes through.
	if err := r.SDS.UpdateBundle(4, []*x509.Certificate{root.cert}, [][]byte{inter.crl(t, 4)}); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, r.SDS, 4)
	if v, _ := r.rootsSecret(t); versionSeq(v) <= versionSeq(version) {
		t.Errorf("Envoy's trust bundle version %s after bundle 4, want newer than %s", v, version)
	}
}

func rootsPEM(cs ...*x509.Certificate) string {
	var b strings.Builder
	for _, c := range cs {
		b.WriteString(string(pemEncodeCert(c)))
	}
	return b.String()
}

// TestEnvoyKeepsConnectionsOpenedBeforeARevocation records a limit of
// the CRL mechanism that whoever enforces revocation must cover: Envoy
// checks the CRL in the TLS handshake only, so a connection established
// before the bundle that revokes its peer's leaf stays open and keeps
// serving requests (HTTP keep-alive here; HTTP/2 between sidecars alike)
// after Envoy has acknowledged that bundle. A new connection is refused.
// If this test fails, Envoy has started closing such connections: good
// news, and the design can drop whatever it does about them.
func TestEnvoyKeepsConnectionsOpenedBeforeARevocation(t *testing.T) {
	root := newRoot(t, "test root")
	inter := root.intermediate(t, "test intermediate")
	envoyLeaf := inter.leaf(t, testTrustDomain+"ns/test/sa/envoy")
	client := inter.leaf(t, testTrustDomain+"ns/test/sa/client")
	r := startEnvoyRig(t, func(s *Server) {
		if err := s.UpdateCertificate(envoyLeaf.chain, envoyLeaf.key); err != nil {
			t.Fatal(err)
		}
		if err := s.UpdateBundle(1, []*x509.Certificate{root.cert}, [][]byte{inter.crl(t, 1)}); err != nil {
			t.Fatal(err)
		}
	})
	r.waitReady(t)
	waitAcked(t, r.SDS, 1)
	kept := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // Envoy's check of the client is under test
		Certificates:       []tls.Certificate{client.tls()},
	}}}
	get := func() string {
		resp, err := kept.Get("https://" + r.Inbound + "/")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Status
	}
	if got := get(); got != "200 OK" {
		t.Fatalf("before the revocation: %s", got)
	}
	if err := r.SDS.UpdateBundle(2, []*x509.Certificate{root.cert}, [][]byte{inter.crl(t, 2, client.serial())}); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, r.SDS, 2)
	if got := r.inbound(client.tls()); got == "ok" {
		t.Fatal("a new connection with the revoked leaf is accepted")
	}
	time.Sleep(500 * time.Millisecond)
	if got := get(); got != "200 OK" {
		t.Errorf("the connection opened before the revocation: %s (Envoy now closes or refuses it)", got)
	}
}
