package issuer_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"log/slog"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/identity/issuer"
	"github.com/bulwarkmesh/bulwark/model"
	"github.com/bulwarkmesh/bulwark/sidecar/contract"
)

// fuzzCA signs whatever it is asked, quickly, and remembers the identity
// it was asked for: the fuzz target checks what the issuer asks, not the
// CA's own checks (the ca package tests those).
type fuzzCA struct {
	key  *ecdsa.PrivateKey
	root *x509.Certificate

	mu        sync.Mutex
	asked     []spiffeid.ID
	workloads []ca.Workload
}

func newFuzzCA(tb testing.TB) *fuzzCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake root"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &fuzzCA{key: key, root: root}
}

func (c *fuzzCA) TrustDomain() spiffeid.TrustDomain { return td }
func (c *fuzzCA) Roots() []*x509.Certificate        { return []*x509.Certificate{c.root} }

func (c *fuzzCA) SignSVID(pub crypto.PublicKey, id spiffeid.ID, _ time.Duration) ([]*x509.Certificate, error) {
	c.mu.Lock()
	c.asked = append(c.asked, id)
	c.mu.Unlock()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{id.URL()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.root, pub, c.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf}, nil
}

func (c *fuzzCA) SignWorkloadSVID(pub crypto.PublicKey, id spiffeid.ID, w ca.Workload, ttl time.Duration) ([]*x509.Certificate, error) {
	c.mu.Lock()
	c.workloads = append(c.workloads, w)
	c.mu.Unlock()
	return c.SignSVID(pub, id, ttl)
}

// take returns the identities and workloads the CA was asked to sign for
// since the last take.
func (c *fuzzCA) take() ([]spiffeid.ID, []ca.Workload) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids, ws := c.asked, c.workloads
	c.asked, c.workloads = nil, nil
	return ids, ws
}

// fuzzTokens accepts the join token "bwjt_good" for every workload and
// remembers for which.
type fuzzTokens struct{ redeemed []string }

func (f *fuzzTokens) Redeem(token, workload string) error {
	if token != "bwjt_good" {
		return errors.New("unknown join token")
	}
	f.redeemed = append(f.redeemed, workload)
	return nil
}

// fuzzReviewer accepts the ServiceAccount token "sa:<namespace>:<service
// account>:<pod>".
type fuzzReviewer struct{}

func (fuzzReviewer) Review(_ context.Context, token string) (issuer.ServiceAccountIdentity, error) {
	parts := strings.Split(token, ":")
	if len(parts) != 4 || parts[0] != "sa" {
		return issuer.ServiceAccountIdentity{}, errors.New("token not valid")
	}
	return issuer.ServiceAccountIdentity{Namespace: parts[1], ServiceAccount: parts[2], Pod: parts[3]}, nil
}

// fuzzCSR returns a CSR signed by a new key, made from tmpl.
func fuzzCSR(tb testing.TB, tmpl *x509.CertificateRequest, key crypto.Signer) []byte {
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		key = k
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// FuzzSignCertificate sends the CA service what a caller controls: the
// CSR, the workload it names, the lifetime it asks for and its
// credential (none, a join token, a ServiceAccount token, a certificate
// of some identity, or raw authorization metadata). Nothing panics, a
// refusal says why, and a certificate is issued only for the identity of
// the workload named, to a caller whose credential proves that workload
// or identity, for a CSR that asks for no other identity.
func FuzzSignCertificate(f *testing.F) {
	frontend, _ := url.Parse(frontendID)
	api, _ := url.Parse(apiID)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		f.Fatal(err)
	}
	caTrue, err := asn1.Marshal(struct{ IsCA bool }{true})
	if err != nil {
		f.Fatal(err)
	}
	csrs := [][]byte{
		fuzzCSR(f, &x509.CertificateRequest{URIs: []*url.URL{frontend}}, nil),
		fuzzCSR(f, &x509.CertificateRequest{}, nil),
		fuzzCSR(f, &x509.CertificateRequest{URIs: []*url.URL{frontend, api}}, nil),
		fuzzCSR(f, &x509.CertificateRequest{URIs: []*url.URL{api, frontend}}, nil),
		fuzzCSR(f, &x509.CertificateRequest{URIs: []*url.URL{api}}, nil),
		fuzzCSR(f, &x509.CertificateRequest{DNSNames: []string{"api.demo.svc"}, Subject: pkix.Name{CommonName: apiID}}, nil),
		fuzzCSR(f, &x509.CertificateRequest{Subject: pkix.Name{CommonName: strings.Repeat("x", 10000)}}, nil),
		fuzzCSR(f, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caTrue}}}, nil),
		fuzzCSR(f, &x509.CertificateRequest{URIs: []*url.URL{frontend}}, rsaKey),
		[]byte("not a CSR"),
	}
	type seed struct {
		workload string
		ttl      int64
		how      uint8
		cred     string
	}
	seeds := []seed{
		{"demo/frontend-1", 0, 1, "bwjt_good"},
		{"demo/frontend-1", 3600, 3, "frontend"},
		{"demo/api-1", 1 << 40, 3, "frontend"},
		{"demo/api-1", -1, 2, "sa:demo:api:api-1"},
		{"demo/api-1", 0, 2, "sa:demo:frontend:api-1"},
		{"demo/frontend-1", 0, 0, ""},
		{"demo/frontend-1", 0, 4, "JoinToken bwjt_good"},
		{"demo/frontend-1", 0, 4, "jointoken    bwjt_good   "},
		{"bulwark-system/bulwark", 0, 1, "bwjt_good"},
		{"bulwark-system/bulwark", 0, 2, "sa:bulwark-system:bulwark:bulwark"},
		{"bulwark-system/bulwark", 0, 3, "bulwark"},
		{strings.Repeat("w", 65536), 0, 1, "bwjt_good"},
		{"demo/frontend-1\x1b[2J\r\nforged", 0, 1, "bwjt_good"},
		{"demo/frontend-1", 0, 1, strings.Repeat("t", 65536)},
	}
	for i, s := range seeds {
		f.Add(csrs[i%len(csrs)], s.workload, s.ttl, s.how, s.cred)
	}
	for _, c := range csrs {
		f.Add(c, "demo/frontend-1", int64(0), uint8(1), "bwjt_good")
	}

	store := model.NewStore()
	st := &model.State{Mesh: model.Mesh{TrustDomain: "cluster.local"}}
	for _, w := range []struct{ ns, name, sa string }{{"demo", "frontend-1", "frontend"}, {"demo", "api-1", "api"}, {"bulwark-system", "bulwark", "bulwark"}} {
		// The last one is the control plane's identity, which a Kubernetes
		// pod may run as: never issued.
		st.Workloads = append(st.Workloads, &model.Workload{Namespace: w.ns, Name: w.name, ServiceAccount: w.sa, Address: "10.0.0.1", LocalAddress: "127.0.0.1"})
	}
	if _, err := store.ReplaceState(st); err != nil {
		f.Fatal(err)
	}
	authority := newFuzzCA(f)
	tokens := &fuzzTokens{}
	iss, err := issuer.New(issuer.Config{CA: authority, Store: store, Tokens: tokens, ServiceAccounts: fuzzReviewer{},
		Logger: slog.New(slog.DiscardHandler), RateLimit: issuer.NoRateLimit})
	if err != nil {
		f.Fatal(err)
	}
	snap := store.Snapshot()

	f.Fuzz(func(t *testing.T, csr []byte, workload string, ttl int64, how uint8, cred string) {
		authority.take()
		tokens.redeemed = nil
		ctx := context.Background()
		var peerID spiffeid.ID
		switch how % 5 {
		case 1:
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(contract.AuthorizationKey, contract.JoinTokenScheme+" "+cred))
		case 2:
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(contract.AuthorizationKey, contract.ServiceAccountTokenScheme+" "+cred))
		case 3:
			id, err := spiffeid.FromSegments(td, "ns", "demo", "sa", cred)
			if err != nil {
				return
			}
			peerID = id
			cert := &x509.Certificate{URIs: []*url.URL{id.URL()}}
			ctx = peer.NewContext(ctx, &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}}})
		case 4:
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(contract.AuthorizationKey, cred))
		}
		resp, err := iss.SignCertificate(ctx, &cav1.SignCertificateRequest{Csr: csr, Workload: workload, TtlSeconds: ttl})
		asked, askedFor := authority.take()
		if err != nil {
			if status.Convert(err).Message() == "" {
				t.Fatal("a refusal that says nothing")
			}
			return
		}

		ns, name, _ := model.ParseNodeID(workload)
		w := snap.Workload(ns, name)
		if w == nil {
			t.Fatalf("issued %s for %q, which is no workload", resp.GetSpiffeId(), workload)
		}
		want := w.Identity("cluster.local")
		if want == cpID {
			t.Fatalf("issued the control plane's identity %s for %q", want, workload)
		}
		if resp.GetSpiffeId() != want.String() || len(asked) != 1 || asked[0] != want ||
			len(askedFor) != 1 || askedFor[0] != (ca.Workload{Namespace: ns, Name: name}) {
			t.Fatalf("for %s (%s): issued %s, the CA was asked for %v of %v", workload, want, resp.GetSpiffeId(), asked, askedFor)
		}
		// What the credential was, as the issuer reads metadata: a scheme,
		// a space, the token.
		scheme, token := "", cred
		switch how % 5 {
		case 1:
			scheme = contract.JoinTokenScheme
		case 2:
			scheme = contract.ServiceAccountTokenScheme
		case 4:
			scheme, token, _ = strings.Cut(cred, " ")
		}
		token = strings.TrimSpace(token)
		switch {
		case how%5 == 3:
			if peerID != want {
				t.Fatalf("issued %s to a peer that is %s", want, peerID)
			}
		case strings.EqualFold(scheme, contract.JoinTokenScheme):
			if len(tokens.redeemed) != 1 || tokens.redeemed[0] != workload {
				t.Fatalf("issued %s with join tokens redeemed for %q", want, tokens.redeemed)
			}
		case strings.EqualFold(scheme, contract.ServiceAccountTokenScheme):
			sa, err := fuzzReviewer{}.Review(ctx, token)
			if err != nil || sa.Namespace != ns || sa.Pod != name || sa.ServiceAccount != w.ServiceAccount {
				t.Fatalf("issued %s for ServiceAccount token %q", want, token)
			}
		default:
			t.Fatalf("issued %s without a credential (%q)", want, cred)
		}
		req, err := x509.ParseCertificateRequest(csr)
		if err != nil {
			t.Fatalf("issued for a CSR that does not parse: %v", err)
		}
		if len(req.URIs) > 1 || (len(req.URIs) == 1 && req.URIs[0].String() != want.String()) {
			t.Fatalf("issued %s for a CSR asking for %v", want, req.URIs)
		}
	})
}
