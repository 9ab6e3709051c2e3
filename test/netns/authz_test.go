package netns

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/netnstest"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

const (
	apiPod  = "10.77.0.11:8080"
	echoPod = "10.77.0.11:9000"
	otherID = "spiffe://cluster.local/ns/demo/sa/other"
)

// certFor returns a client certificate of the mesh's own CA for id.
func certFor(t *testing.T, id string) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := cl.cp.CA.SignSVID(key.Public(), spiffeid.RequireFromString(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pemutil.EncodeKey(key)
	c, err := tls.X509KeyPair(pemutil.EncodeCerts(chain), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// forged signs, with the mesh's own intermediate, a certificate the CA
// would never issue: to check that only the typed URI SAN counts.
func forged(t *testing.T, uris []string, dns []string, cn string) *tls.Certificate {
	t.Helper()
	dir := filepath.Join(cl.net.Dir, "ca")
	certPEM, _ := os.ReadFile(filepath.Join(dir, ca.CertFile))
	keyPEM, _ := os.ReadFile(filepath.Join(dir, ca.KeyFile))
	b, _ := pem.Decode(certPEM)
	issuer, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := pem.Decode(keyPEM)
	ik, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, DNSNames: dns,
	}
	for _, u := range uris {
		parsed, _ := url.Parse(u)
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, key.Public(), ik)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, issuer.Raw}, PrivateKey: key}
}

// rawHTTP sends one request, with the path byte for byte as given, from
// the attacker's namespace straight to addr: over TLS with cert when
// cert is set, in plaintext otherwise. It bypasses every client-side
// normalization, so it tests the server sidecar alone.
func rawHTTP(t *testing.T, from *netnstest.Pod, addr string, cert *tls.Certificate, rawPath string, header map[string]string) (int, string, error) {
	t.Helper()
	conn, err := netnstest.DialIn(from, addr)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var rw io.ReadWriter = conn
	if cert != nil {
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}})
		if err := tc.Handshake(); err != nil {
			return 0, "", err
		}
		rw = tc
	}
	req := "GET " + rawPath + " HTTP/1.1\r\nHost: api.demo\r\nConnection: close\r\n"
	for k, v := range header {
		req += k + ": " + v + "\r\n"
	}
	if _, err := io.WriteString(rw, req+"\r\n"); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(rw), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// accessLog returns the JSON access log lines of a pod's sidecar.
func accessLog(t *testing.T, p *netnstest.Pod) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(cl.net.LogPath(p, "agent"))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(string(b), "\n") {
		var m map[string]any
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// logged waits for an access log line of p's sidecar with the given
// request ID or path and returns its "details".
func logged(t *testing.T, p *netnstest.Pod, path string, status int) string {
	t.Helper()
	var details string
	testwait.Until(t, "access log line for "+path, 10*time.Second, func() bool {
		for _, l := range accessLog(t, p) {
			if l["path"] == path && fmt.Sprint(l["status"]) == fmt.Sprint(status) {
				details = fmt.Sprint(l["details"])
				return true
			}
		}
		return false
	})
	return details
}

// TestAuthorizationThroughSidecars: through real sidecars on both ends,
// frontend is allowed; other is denied with 403 and api's sidecar log
// names the rule; other's own allowed path works.
func TestAuthorizationThroughSidecars(t *testing.T) {
	needCluster(t)
	frontend, other, api := cl.pods["frontend-1"], cl.pods["other-1"], cl.pods["api-1"]
	if r, err := get(t, netnstest.Client(frontend, nil), apiVIP+"/hello-frontend", nil); err != nil || r.Caller != frontendID {
		t.Fatalf("frontend -> api: %v %+v", err, r)
	}
	_, err := get(t, netnstest.Client(other, nil), apiVIP+"/hello-other", nil)
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("other -> api /hello-other: %v, want 403", err)
	}
	if d := logged(t, api, "/hello-other", 403); d != "rbac_access_denied_matched_policy[~default-deny]" {
		t.Errorf("denial logged as %q, want the rule named", d)
	}
	if _, err := get(t, netnstest.Client(frontend, nil), apiVIP+"/admin", nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("frontend -> api /admin: %v, want 403", err)
	}
	if d := logged(t, api, "/admin", 403); d != "rbac_access_denied_matched_policy[demo/no-admin/0]" {
		t.Errorf("denial logged as %q, want demo/no-admin/0", d)
	}
	if r, err := get(t, netnstest.Client(other, nil), apiVIP+"/public/x", nil); err != nil || r.Caller != otherID {
		t.Errorf("other -> api /public/x: %v %+v", err, r)
	}
}

// TestBypassAttemptsAreDenied sends, as frontend (which may call api),
// paths that try to reach /admin past the DENY rule, straight at api's
// sidecar. None reaches the app; /ADMIN does only while the rule is case
// sensitive, and a policy edit changes that without restarting Envoy.
func TestBypassAttemptsAreDenied(t *testing.T) {
	needCluster(t)
	attacker, api := cl.pods["attacker"], cl.pods["api-1"]
	me := certFor(t, frontendID)
	if status, body, err := rawHTTP(t, attacker, apiPod, me, "/fine", nil); err != nil || status != 200 {
		t.Fatalf("control: frontend's certificate to /fine: %d %v %s", status, err, body)
	}
	for _, p := range []string{"/admin", "/admin/", "/admin/users", "//admin", "///admin", "/a/../admin", "/./admin",
		"/%2Fadmin", "/%2fadmin", "/admin%2f", "/%61dmin", "/admin?x=1", "/admin#x", "/admin;x"} {
		status, body, err := rawHTTP(t, attacker, apiPod, me, p, nil)
		if err == nil && status == 200 {
			t.Errorf("%s reached the app: %s", p, body)
		}
	}
	before := uptime(t, api)
	if status, _, err := rawHTTP(t, attacker, apiPod, me, "/ADMIN", nil); err != nil || status != 200 {
		t.Errorf("/ADMIN with a case-sensitive rule: %d %v, want 200", status, err)
	}
	anyCase := strings.Replace(mesh(), `paths: ["/admin", "/admin/*"]}]`, `paths: ["/admin", "/admin/*"], ignoreCase: true}]`, 1)
	if anyCase == mesh() {
		t.Fatal("test setup: the policy text did not change")
	}
	if err := cl.writeMesh(anyCase); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.writeMesh(mesh()) })
	testwait.Until(t, "/ADMIN to be denied", 15*time.Second, func() bool {
		status, _, err := rawHTTP(t, attacker, apiPod, me, "/ADMIN", nil)
		return err == nil && status == 403
	})
	for _, p := range []string{"/Admin/users", "/aDmIn"} {
		if status, _, _ := rawHTTP(t, attacker, apiPod, me, p, nil); status == 200 {
			t.Errorf("%s reached the app with a case-insensitive rule", p)
		}
	}
	if after := uptime(t, api); after < before {
		t.Error("api's Envoy restarted for a policy edit")
	}
}

// TestIdentityMatching: a namespace rule for foo admits foo, not foobar;
// a certificate whose DNS SAN or subject carries an allowed SPIFFE ID,
// but whose URI SAN is another identity, is not that identity.
func TestIdentityMatching(t *testing.T) {
	needCluster(t)
	attacker := cl.pods["attacker"]
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want int
	}{
		{"namespace foo", certFor(t, "spiffe://cluster.local/ns/foo/sa/client"), 200},
		{"namespace foobar", certFor(t, "spiffe://cluster.local/ns/foobar/sa/client"), 403},
		{"namespace fo", certFor(t, "spiffe://cluster.local/ns/fo/sa/client"), 403},
		{"frontend in the DNS SAN and subject", forged(t, []string{"spiffe://cluster.local/ns/tools/sa/evil"}, []string{frontendID}, frontendID), 403},
	} {
		status, _, err := rawHTTP(t, attacker, apiPod, tc.cert, "/x", nil)
		if err != nil || status != tc.want {
			t.Errorf("%s: %d, %v; want %d", tc.name, status, err, tc.want)
		}
	}
	// Without a URI SAN the handshake itself fails: inbound TLS accepts
	// only certificates with a SPIFFE URI of the trust domain.
	if status, _, err := rawHTTP(t, attacker, apiPod, forged(t, nil, []string{frontendID}, frontendID), "/x", nil); err == nil {
		t.Errorf("a certificate with only a DNS SAN got an answer: %d", status)
	}
}

// TestTCPDenyClosesTheConnection: on the echo port, a DENY rule for
// other closes its connection; frontend, through its own sidecar, gets
// its echo.
func TestTCPDenyClosesTheConnection(t *testing.T) {
	needCluster(t)
	attacker, frontend := cl.pods["attacker"], cl.pods["frontend-1"]
	echo := func(c io.ReadWriter) (string, error) {
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return "", err
		}
		return bufio.NewReader(c).ReadString('\n')
	}
	conn, err := netnstest.DialIn(attacker, echoPod)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*certFor(t, otherID)}})
	if line, err := echo(tc); err == nil {
		t.Errorf("other got an echo through a DENY rule: %q", line)
	}
	// frontend's app calls the service address; its sidecar does mTLS.
	fc, err := netnstest.DialIn(frontend, "10.96.0.11:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	_ = fc.SetDeadline(time.Now().Add(10 * time.Second))
	if line, err := echo(fc); err != nil || line != "api-1: ping\n" {
		t.Errorf("frontend's echo: %q, %v", line, err)
	}
}

// TestDryRunDenyOnlyCounts: a dry-run DENY lets the request through and
// Envoy counts it in its shadow statistics, in total and per rule.
func TestDryRunDenyOnlyCounts(t *testing.T) {
	needCluster(t)
	frontend, api := cl.pods["frontend-1"], cl.pods["api-1"]
	dry := `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: freeze, namespace: demo}
spec:
  selector: {service: api}
  action: DENY
  dryRun: true
  rules: [{from: [{serviceAccounts: [frontend]}], to: [{ports: [8080], paths: ["/v1/frozen/*"]}]}]
`
	if err := cl.writeMesh(mesh(dry)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.writeMesh(mesh()) })
	const stat = "http.inbound_8080.rbac.shadow_denied"
	defer func() {
		if t.Failed() {
			body, _ := netnstest.Admin(api, "/stats?filter=rbac")
			t.Logf("rbac stats:\n%s", body)
		}
	}()
	testwait.Until(t, "the dry run to count a request", 15*time.Second, func() bool {
		if _, err := get(t, netnstest.Client(frontend, nil), apiVIP+"/v1/frozen/x", nil); err != nil {
			if strings.Contains(err.Error(), "403") {
				t.Fatalf("a dry-run DENY blocked the request: %v", err)
			}
			return false // the listener is being replaced; try again
		}
		body, err := netnstest.Admin(api, "/stats?filter="+stat)
		return err == nil && strings.Contains(body, stat+": ") && !strings.Contains(body, stat+": 0")
	})
	if t.Failed() {
		body, _ := netnstest.Admin(api, "/stats?filter=rbac")
		t.Logf("rbac stats:\n%s", body)
	}
	// Per rule, too.
	body, err := netnstest.Admin(api, "/stats?filter=freeze")
	if err != nil || !strings.Contains(body, "demo/freeze/0") || !strings.Contains(body, "shadow_denied") {
		t.Errorf("no per-rule shadow statistic for demo/freeze/0:\n%s", body)
	}
}

// TestConfigIsScopedByPolicy: a sidecar gets only the services its
// identity may call: other may not use api's echo port, frontend may.
func TestConfigIsScopedByPolicy(t *testing.T) {
	needCluster(t)
	has := func(p *netnstest.Pod, listener string) bool {
		body, err := netnstest.Admin(p, "/listeners")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(body, listener+"::")
	}
	if !has(cl.pods["frontend-1"], "outbound|9000|api.demo") || !has(cl.pods["frontend-1"], "outbound|8080|api.demo") {
		t.Error("frontend lacks an api listener it may use")
	}
	if !has(cl.pods["other-1"], "outbound|8080|api.demo") {
		t.Error("other lacks api:8080, where it may call /public/*")
	}
	if has(cl.pods["other-1"], "outbound|9000|api.demo") {
		t.Error("other got api:9000, which a DENY rule closes to it")
	}
}
