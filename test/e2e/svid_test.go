package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/localmesh"
)

// withURIs signs, with the mesh's own intermediate, a leaf carrying the
// given URI SANs: what a plug-in or misbehaving CA could issue and
// Bulwark's CA never does.
func withURIs(t *testing.T, m *localmesh.Mesh, uris ...string) *tls.Certificate {
	t.Helper()
	dir := filepath.Join(m.WorkDir(), "ca")
	certPEM, err := os.ReadFile(filepath.Join(dir, ca.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, ca.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		t.Fatalf("no PEM in %s", dir)
	}
	issuer, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	issuerKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), issuerKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, issuer.Raw}, PrivateKey: key}
}

// echo opens a TLS connection to addr with cert and sends one line; it
// returns the answer, or the error that ended the connection.
func echo(t *testing.T, addr string, cert *tls.Certificate) (string, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}}) // the caller does not check who answers
	if _, err := io.WriteString(tc, "ping\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(tc).ReadString('\n')
}

// TestPeerWithTwoURISANsIsRefused: a leaf of the mesh's own CA carrying
// two URI SANs, one of them an identity the policy admits, is refused on
// the data path, HTTP and TCP, whichever comes first: Envoy would
// authorize on any of them while the app is told one. A leaf with only
// the admitted identity, signed the same way, is the control.
func TestPeerWithTwoURISANsIsRefused(t *testing.T) {
	m := startEdgeMesh(t)
	one := withURIs(t, m, edgeFrontendID)
	if status, body := rawRequest(t, edgeAPIHTTP, one, "/one-san", nil); status != http.StatusOK || !strings.Contains(body, `"caller": "`+edgeFrontendID+`"`) {
		t.Fatalf("control: a one-SAN leaf for frontend: %d %s", status, body)
	}
	if line, err := echo(t, edgeAPIEcho, one); err != nil || line != "api-1: ping\n" {
		t.Fatalf("control: a one-SAN leaf for frontend on the TCP port: %q, %v", line, err)
	}
	for _, tc := range []struct {
		name, path string
		uris       []string
	}{
		{"admitted identity first", "/two-sans-frontend-first", []string{edgeFrontendID, edgeOtherID}},
		{"admitted identity second", "/two-sans-frontend-second", []string{edgeOtherID, edgeFrontendID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := withURIs(t, m, tc.uris...)
			if status, body := rawRequest(t, edgeAPIHTTP, cert, tc.path, nil); status != http.StatusForbidden {
				t.Errorf("HTTP: %d %s, want 403", status, body)
			}
			if d := awaitLine(t, m, "api-1", tc.path, 403)["details"]; d != "rbac_access_denied_matched_policy[~one-uri-san]" {
				t.Errorf("api's log: details %v, want the one-URI-SAN rule", d)
			}
			if line, err := echo(t, edgeAPIEcho, cert); err == nil {
				t.Errorf("TCP: the connection was served: %q", line)
			}
		})
	}
}
