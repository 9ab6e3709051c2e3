package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	cav1 "github.com/bulwarkmesh/bulwark/api/ca/v1"
	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/controlplane"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/spiffetls"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

// sign asks the control plane's CA service for a certificate with a
// ServiceAccount token, as the agent in a pod does.
func sign(t *testing.T, cp *controlplane.ControlPlane, workload, token string) (*x509.Certificate, error) {
	t.Helper()
	return signRetrying(t, cp, workload, token, 15*time.Second)
}

// signRetrying is sign, asking again while the answer is Unavailable, up
// to retry.
func signRetrying(t *testing.T, cp *controlplane.ControlPlane, workload, token string, retry time.Duration) (*x509.Certificate, error) {
	t.Helper()
	chain, _, err := signChain(t, cp, workload, token, retry)
	if err != nil {
		return nil, err
	}
	return chain[0], nil
}

// signChain is signRetrying, returning the whole chain and the key.
func signChain(t *testing.T, cp *controlplane.ControlPlane, workload, token string, retry time.Duration) ([]*x509.Certificate, *ecdsa.PrivateKey, error) {
	t.Helper()
	tc := spiffetls.ClientConfig(nil, x509svidBundle(cp), cp.Identity)
	conn, err := grpc.NewClient(cp.XDSAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	c := metadata.AppendToOutgoingContext(ctx, "authorization", "ServiceAccountToken "+token)
	// Until its sources have synced the CA asks callers to come back
	// (Unavailable), and agents do: so does this.
	var resp *cav1.SignCertificateResponse
	for deadline := time.Now().Add(retry); ; time.Sleep(50 * time.Millisecond) {
		resp, err = cav1.NewCertificateServiceClient(conn).SignCertificate(c, &cav1.SignCertificateRequest{Csr: csr, Workload: workload})
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	var chain []*x509.Certificate
	for _, der := range resp.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, err
		}
		chain = append(chain, c)
	}
	return chain, key, nil
}

// expiredToken forges what the API server itself would have issued for
// the pod an hour ago, signed with its service account key: a token
// whose only fault is that it expired.
func expiredToken(t *testing.T, p *corev1.Pod, sa *corev1.ServiceAccount) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(api.dir, "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	var key *ecdsa.PrivateKey
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		key = k
	} else if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		key = k.(*ecdsa.PrivateKey)
	} else {
		t.Fatalf("sa.key: %v", err)
	}
	now := time.Now()
	claims := map[string]any{
		"iss": api.SAIssuer, "sub": "system:serviceaccount:" + p.Namespace + ":" + sa.Name, "aud": []string{"bulwark"},
		"iat": now.Add(-2 * time.Hour).Unix(), "nbf": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      p.Namespace,
			"serviceaccount": map[string]any{"name": sa.Name, "uid": string(sa.UID)},
			"pod":            map[string]any{"name": p.Name, "uid": string(p.UID)},
		},
	}
	enc := func(v any) string {
		j, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(j)
	}
	signing := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestServiceAccountAttestation: a TokenRequest token for audience
// bulwark, bound to a pod, gets a certificate for exactly that service
// account; everything else is refused.
func TestServiceAccountAttestation(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	namespace(t, c, "bulwark-system", false)
	const ns = "att"
	namespace(t, c, ns, true)
	api1 := pod(t, c, ns, "api-1", "api", "10.42.0.1", nil)
	api2 := pod(t, c, ns, "api-2", "api", "10.42.0.2", nil)
	gone := pod(t, c, ns, "api-3", "api", "10.42.0.3", nil)
	cp := controlPlane(t, api.admin(), "bulwark-system", "cp-att")
	testwait.Until(t, "the pods to reach the model", 20*time.Second, func() bool {
		return cp.Store.Snapshot().Workload(ns, "api-3") != nil
	})

	leaf, err := sign(t, cp, ns+"/api-1", tokenFor(t, c, api1, "bulwark"))
	if err != nil {
		t.Fatalf("a good token: %v", err)
	}
	if got := leaf.URIs[0].String(); got != "spiffe://cluster.local/ns/att/sa/api" {
		t.Errorf("certificate for %s, want the pod's service account", got)
	}

	sa, err := c.CoreV1().ServiceAccounts(ns).Get(ctx, "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	goneToken := tokenFor(t, c, gone, "bulwark")
	// A pod of a namespace outside the mesh: its token is good, but the
	// model does not have it (and would not, were the namespace joining
	// the mesh just now, for a moment): come back later.
	namespace(t, c, "att-outside", false)
	outside := pod(t, c, "att-outside", "job-1", "job", "10.42.1.1", nil)
	if _, err := signRetrying(t, cp, "att-outside/job-1", tokenFor(t, c, outside, "bulwark"), 0); status.Code(err) != codes.Unavailable ||
		!strings.Contains(err.Error(), "not in the mesh") {
		t.Errorf("a pod the model does not have: got %v, want Unavailable, not in the mesh", err)
	}
	if err := c.CoreV1().Pods(ns).Delete(ctx, gone.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		workload string
		token    string
		code     codes.Code
		msg      string
	}{
		{"another audience", ns + "/api-1", tokenFor(t, c, api1, "vault"), codes.Unauthenticated, "token rejected"},
		{"expired", ns + "/api-1", expiredToken(t, api1, sa), codes.Unauthenticated, "token rejected"},
		{"another pod's node ID", ns + "/api-2", tokenFor(t, c, api1, "bulwark"), codes.PermissionDenied, "bound to pod att/api-1"},
		{"a deleted pod", ns + "/api-3", goneToken, codes.Unauthenticated, ""},
		{"not a token", ns + "/api-1", "garbage", codes.Unauthenticated, "token rejected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sign(t, cp, tc.workload, tc.token)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want %s mentioning %q", err, tc.code, tc.msg)
			}
		})
	}
	_ = api2
}

// TestReplicasShareOneCA: two control planes on one namespace end up with
// one CA, created once; when one stops, the other keeps issuing from it.
func TestReplicasShareOneCA(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	const sys = "ha-system"
	namespace(t, c, sys, false)
	const ns = "ha"
	namespace(t, c, ns, true)
	p := pod(t, c, ns, "web-1", "web", "10.43.0.1", nil)

	var cps [2]*controlplane.ControlPlane
	var errs [2]error
	var wg sync.WaitGroup
	for i := range cps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cps[i], errs[i] = controlplane.Start(ctx, controlplane.Config{
				Kube:       &controlplane.KubeConfig{Rest: api.admin(), Namespace: sys, Holder: []string{"replica-a", "replica-b"}[i]},
				XDSAddress: "127.0.0.1:0", Debounce: 20 * time.Millisecond,
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	if !cps[0].CA.Roots()[0].Equal(cps[1].CA.Roots()[0]) {
		t.Fatal("the replicas have different roots")
	}
	secrets, err := c.CoreV1().Secrets(sys).List(ctx, metav1.ListOptions{})
	if err != nil || len(secrets.Items) != 1 || secrets.Items[0].Name != "bulwark-ca" {
		t.Fatalf("secrets in %s: %v %v", sys, secrets, err)
	}
	lease, err := c.CoordinationV1().Leases(sys).Get(ctx, "bulwark-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the Lease that guarded creating the CA: %v", err)
	}
	if h := lease.Spec.HolderIdentity; h != nil && *h != "replica-a" && *h != "replica-b" && *h != "" {
		t.Errorf("the Lease is held by %q", *h)
	}

	// Stop the first replica; the second keeps issuing from the same CA.
	if err := cps[0].Stop(); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the pod to reach the second replica's model", 20*time.Second, func() bool {
		return cps[1].Store.Snapshot().Workload(ns, p.Name) != nil
	})
	leaf, err := sign(t, cps[1], ns+"/"+p.Name, tokenFor(t, c, p, "bulwark"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.CheckSVID(append([]*x509.Certificate{leaf}, chainOf(t, cps[1])...), cps[0].CA.Roots(), spiffeid.RequireTrustDomainFromString("cluster.local"), time.Now()); err != nil {
		t.Errorf("the second replica's certificate does not verify against the first's root: %v", err)
	}
	_ = cps[1].Stop()
}

// chainOf returns the CA's chain above a leaf (its signing certificate).
func chainOf(t *testing.T, cp *controlplane.ControlPlane) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(cp.CADir, ca.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{cert}
}

// TestPlugInCAFromASecret: an operator's own CA in the Secret (no root
// key) is used as it is, never replaced.
func TestPlugInCAFromASecret(t *testing.T) {
	needAPIServer(t)
	c := api.client(t)
	applyCRDs(t)
	const sys = "plug-system"
	namespace(t, c, sys, false)
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")}); err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{}
	for _, f := range []string{ca.RootCertFile, ca.CertFile, ca.KeyFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		data[f] = b
	}
	if _, err := c.CoreV1().Secrets(sys).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bulwark-ca"}, Data: data}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cp := controlPlane(t, api.admin(), sys, "cp-plug")
	if got := string(pemutil.EncodeCerts(cp.CA.Roots())); got != string(data[ca.RootCertFile]) {
		t.Error("the control plane does not use the operator's root")
	}
}
