package netns

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bulwarkmesh/bulwark/ca"
	"github.com/bulwarkmesh/bulwark/internal/envoy"
	"github.com/bulwarkmesh/bulwark/internal/netnstest"
	"github.com/bulwarkmesh/bulwark/internal/pemutil"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
	"github.com/bulwarkmesh/bulwark/localmesh/demoapp"
)

const (
	apiVIP     = "http://10.96.0.11:8080"
	apiPodURL  = "http://10.77.0.11:8080"
	frontendID = "spiffe://cluster.local/ns/demo/sa/frontend"
)

func get(t *testing.T, c *http.Client, url string, header map[string]string) (*demoapp.Reply, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s: %s", resp.Status, body)
	}
	var r demoapp.Reply
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%w: %s", err, body)
	}
	return &r, nil
}

// TestSidecarToSidecar: frontend's app calls api by its service address;
// both sidecars are in the path and api's app learns who called.
func TestSidecarToSidecar(t *testing.T) {
	needCluster(t)
	r, err := get(t, netnstest.Client(cl.pods["frontend-1"], nil), apiVIP+"/hello", nil)
	if err != nil {
		t.Fatalf("frontend -> api: %v", err)
	}
	if r.Workload != "api-1" || r.Caller != frontendID {
		t.Errorf("answered by %q for caller %q; want api-1 and %s", r.Workload, r.Caller, frontendID)
	}
	if !strings.HasPrefix(r.Peer, "127.0.0.1:") {
		t.Errorf("the app was reached from %s, not through its sidecar", r.Peer)
	}
}

// otherCA returns a client certificate for frontend's identity from a CA
// the mesh does not trust.
func otherCA(t *testing.T) tls.Certificate {
	t.Helper()
	dir := t.TempDir()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	if err := ca.Init(ca.InitConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	c, err := ca.Load(ca.LoadConfig{Dir: dir, Config: ca.Config{TrustDomain: td}})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := c.SignSVID(key.Public(), spiffeid.RequireFromString(frontendID), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pemutil.EncodeKey(key)
	cert, err := tls.X509KeyPair(pemutil.EncodeCerts(chain), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestStrictRefusesWhatHasNoMeshCertificate: from a namespace without a
// sidecar, neither plaintext, nor TLS without a client certificate, nor
// TLS with a certificate of another CA reaches api, at its service
// address or its pod address.
func TestStrictRefusesWhatHasNoMeshCertificate(t *testing.T) {
	needCluster(t)
	attacker := cl.pods["attacker"]
	if _, err := get(t, netnstest.Client(attacker, nil), apiPodURL+"/", nil); err == nil {
		t.Error("plaintext from the attacker reached api")
	}
	insecure := &tls.Config{InsecureSkipVerify: true} // the attacker does not care who answers
	if _, err := get(t, netnstest.Client(attacker, insecure), strings.Replace(apiPodURL, "http", "https", 1)+"/", nil); err == nil {
		t.Error("TLS without a client certificate reached api")
	}
	foreign := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{otherCA(t)}}
	_, err := get(t, netnstest.Client(attacker, foreign), strings.Replace(apiPodURL, "http", "https", 1)+"/", nil)
	if err == nil {
		t.Error("a certificate from another CA reached api")
	}
	// Controls: the same TLS client with a certificate of the mesh's own
	// CA gets through, so the refusals above are about the certificate.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := cl.cp.CA.SignSVID(key.Public(), spiffeid.RequireFromString("spiffe://cluster.local/ns/tools/sa/debug"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := pemutil.EncodeKey(key)
	mine, err := tls.X509KeyPair(pemutil.EncodeCerts(chain), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// It is authenticated (TLS succeeds) but not authorized: 403, not a
	// closed connection.
	status, _, err := rawHTTP(t, attacker, "10.77.0.11:8080", &mine, "/", nil)
	if err != nil || status != http.StatusForbidden {
		t.Errorf("a mesh certificate with no policy over the same path: %d, %v; want 403", status, err)
	}
	if _, err := get(t, netnstest.Client(cl.pods["frontend-1"], nil), apiVIP+"/", nil); err != nil {
		t.Errorf("frontend -> api after the attacks: %v", err)
	}
}

func uptime(t *testing.T, p *netnstest.Pod) time.Duration {
	t.Helper()
	body, err := netnstest.Admin(p, "/server_info")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Uptime string `json:"uptime_current_epoch"`
	}
	if err := json.Unmarshal([]byte(body), &info); err != nil {
		t.Fatal(err)
	}
	d, err := time.ParseDuration(info.Uptime)
	if err != nil {
		t.Fatalf("uptime %q: %v", info.Uptime, err)
	}
	return d
}

// TestPermissiveThenStrictWithoutRestart: a PERMISSIVE policy lets the
// attacker's plaintext in (with no identity, whatever it claims); turning
// the namespace back to STRICT shuts it out again, and Envoy never
// restarts.
func TestPermissiveThenStrictWithoutRestart(t *testing.T) {
	needCluster(t)
	attacker, api := cl.pods["attacker"], cl.pods["api-1"]
	before := uptime(t, api)
	permissive := `---
apiVersion: bulwark.dev/v1alpha1
kind: MTLSPolicy
metadata: {name: migration, namespace: demo}
spec:
  mode: PERMISSIVE
  exception: {reason: "callers without sidecars during the migration", owner: team-demo}
`
	// PERMISSIVE lets plaintext through TLS, but no rule that names an
	// identity admits it, whatever identity its headers claim.
	if err := cl.writeMesh(mesh(permissive)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.writeMesh(mesh()) })
	testwait.Until(t, "plaintext to reach authorization", 15*time.Second, func() bool {
		status, _, err := rawHTTP(t, attacker, "10.77.0.11:8080", nil, "/hello", map[string]string{
			"X-Forwarded-Client-Cert": "URI=" + frontendID,
		})
		return err == nil && status == http.StatusForbidden
	})

	// An ALLOW rule for callers without a certificate admits it.
	plaintextOK := `---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: legacy-callers, namespace: demo}
spec:
  selector: {service: api}
  action: ALLOW
  rules: [{from: [{unauthenticated: true}], to: [{ports: [8080], paths: ["/legacy/*"]}]}]
`
	if err := cl.writeMesh(mesh(permissive, plaintextOK)); err != nil {
		t.Fatal(err)
	}
	var r *demoapp.Reply
	testwait.Until(t, "plaintext to be accepted", 15*time.Second, func() bool {
		var err error
		r, err = get(t, netnstest.Client(attacker, nil), apiPodURL+"/legacy/x", map[string]string{
			"X-Forwarded-Client-Cert": "URI=" + frontendID, // a forged identity
		})
		return err == nil
	})
	if r.Caller != "" {
		t.Errorf("a plaintext caller was given the identity %q", r.Caller)
	}
	// mTLS keeps working on the same port.
	if r, err := get(t, netnstest.Client(cl.pods["frontend-1"], nil), apiVIP+"/", nil); err != nil || r.Caller != frontendID {
		t.Errorf("frontend in PERMISSIVE: %v, caller %v", err, r)
	}

	if err := cl.writeMesh(mesh()); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "plaintext to be refused again", 15*time.Second, func() bool {
		_, _, err := rawHTTP(t, attacker, "10.77.0.11:8080", nil, "/legacy/x", nil)
		return err != nil
	})
	if after := uptime(t, api); after < before {
		t.Errorf("api's Envoy restarted (uptime %s, was %s); mode changes must arrive over xDS", after, before)
	}
}

// leafSerial returns the serial of the workload certificate Envoy holds,
// or "" if its admin interface did not answer this time (it is polled).
func leafSerial(t *testing.T, p *netnstest.Pod) string {
	t.Helper()
	body, err := netnstest.Admin(p, "/certs")
	if err != nil {
		t.Logf("certs of %s: %v", p.Name, err)
		return ""
	}
	serial, err := envoy.CertSerial(body, "spiffe://cluster.local/ns/demo/")
	if err != nil {
		t.Fatalf("certs of %s: %v", p.Name, err)
	}
	return serial
}

// TestCertificatesRotateUnderTraffic: with 40s certificates, the agents
// renew at about half life; under continuous traffic every request
// succeeds, and Envoy's /certs shows a new serial each time, at least
// three times on each side.
func TestCertificatesRotateUnderTraffic(t *testing.T) {
	needCluster(t)
	frontend, api := cl.pods["frontend-1"], cl.pods["api-1"]
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := netnstest.Client(frontend, nil)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := get(t, c, apiVIP+"/rotate", nil); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			} else {
				ok.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	seen := map[string]map[string]bool{"frontend-1": {}, "api-1": {}}
	deadline := time.Now().Add(4 * certTTL)
	for time.Now().Before(deadline) {
		seen["frontend-1"][leafSerial(t, frontend)] = true
		seen["api-1"][leafSerial(t, api)] = true
		if len(seen["frontend-1"]) >= 4 && len(seen["api-1"]) >= 4 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	for name, serials := range seen {
		delete(serials, "")
		if len(serials) < 4 {
			t.Errorf("%s: Envoy showed %d certificates (%d rotations), want at least 3 rotations", name, len(serials), len(serials)-1)
		}
	}
	t.Logf("%d requests succeeded, %d failed, across the rotations", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during rotation; first: %v", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
	}
	if ok.Load() == 0 {
		t.Error("no traffic flowed")
	}
}
