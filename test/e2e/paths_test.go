package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkmesh/bulwark/authz"
	"github.com/bulwarkmesh/bulwark/internal/envoy/envoytest"
	"github.com/bulwarkmesh/bulwark/internal/testwait"
)

// pathsMesh is api alone, at 127.0.83.1, with DENY paths for frontend
// (which may call anything else) and ALLOW paths for other (which may
// call nothing else). Addresses in 127.0.83.0/24 and 127.0.84.0/24 keep
// clear of the other tests and of `make run`.
const pathsMesh = `apiVersion: bulwark.dev/v1alpha1
kind: Mesh
metadata: {name: paths}
spec:
  services:
    - {name: api, namespace: demo, ports: [{name: http, port: 8080, protocol: http}]}
  workloads:
    - {name: api-1, namespace: demo, serviceAccount: api, address: 127.0.83.1, localAddress: 127.0.84.1, services: [api]}
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: callers, namespace: demo}
spec:
  selector: {service: api}
  action: ALLOW
  rules:
    - from: [{serviceAccounts: [frontend]}]
    - from: [{serviceAccounts: [other]}]
      to: [{paths: ["/public/*", "/users/*/profile", "/docs/**", "/a/**/b"]}]
---
apiVersion: bulwark.dev/v1alpha1
kind: AccessPolicy
metadata: {name: closed, namespace: demo}
spec:
  selector: {service: api}
  action: DENY
  rules:
    - from: [{serviceAccounts: [frontend]}]
      to: [{paths: ["/admin", "/admin/*", "/beta/**", "/files/**/private", "/users/*/secret"]}]
    - from: [{serviceAccounts: [frontend]}]
      to: [{paths: ["/private", "/private/*"], ignoreCase: true}]
`

// mustDeny are paths the app would read as one that frontend's DENY
// rules name: Envoy must never let them through, whatever explain says.
var mustDeny = []string{
	"/admin", "/admin;x", "/admin%3bx", "/admin/x",
	// Path parameters on an empty segment (issue 11, finding 3).
	"/;/admin", "/;x/admin", "//;/admin", "/%3b/admin", "/%3B/admin", "/;/;/admin", "/;/admin/x",
	// Dot segments with parameters, literal or encoded.
	"/.;/admin", "/hello/..;/admin", "/a/%2e%2e;/admin", "/x/..%3B/admin", "/%2e;/admin",
	// "**" is zero segments too (finding 4).
	"/beta", "/beta/", "/beta;x", "/files/private", "/files/a/b/private",
	// Backslashes, encoded dots and letters.
	"/x/..\\admin", "/x\\..\\admin", "/%2e%2e/admin", "/%61dmin", "/PRIVATE/x", "/users/1/secret",
}

// fixedPaths are the cases of the issue and of reading Envoy, sent to
// both callers before the generated ones.
var fixedPaths = append([]string{
	"/", "//", "/a/..//", "/hello", "/administrator", "/x/admin", "/admin/", "/Admin", "/betax", "/files/privatex",
	"/%zz", "/admin%", "/admin%2", "/%2x", "/%00", "/admin%00", "/a%%30%30", "/a%%41", "/a%41%2541",
	"/%2Fadmin", "/a%5cb", "/admin#x", "/admin?x", "/admin?x=%2f", "/x/..;?/admin", "/a/..;%2f/admin",
	"/a\"b", "/a<b>", "/a{b|c}", "/a^b`", "/a'b", "/a%20b", "/a%7e", "/a%3a%40",
	"/public/x", "/public/", "/public/a;b", "/public/;x", "/public/%2e%2e;/admin", "/public/..;/admin",
	"/users/42/profile", "/users/;/profile", "/users;x/42/profile", "/docs", "/docs/a/b", "/docsx",
	"/a/b", "/a/x/y/b", "/a/;/b", "/ab",
}, mustDeny...)

// TestExplainAgreesWithEnvoyOnPaths sends a corpus of request paths
// through a real sidecar configured by the control plane, as two callers
// (one facing DENY paths, one ALLOW paths), and checks that Envoy's answer
// (the app's, 403 or 400) is what `bulwark policy explain` says for every
// one. The corpus is the fixed cases and a generated part: segments with
// ".", "..", ";", valid and invalid escapes, "\", "//" and mixed case.
// BULWARK_PATH_CORPUS sets the generated part's size (default 150; make
// fuzz runs more), BULWARK_PATH_SEED its seed.
func TestExplainAgreesWithEnvoyOnPaths(t *testing.T) {
	bin := envoytest.Bin(t)
	n := envInt(t, "BULWARK_PATH_CORPUS", 150)
	seed := envInt(t, "BULWARK_PATH_SEED", 1)

	m := startMesh(t, bin, pathsMesh)

	snap := m.ControlPlane().Store.Snapshot()
	svc := snap.Service("demo", "api")
	callers := []struct {
		name string
		id   string
		cert *tls.Certificate
	}{
		{name: "frontend", id: "spiffe://cluster.local/ns/demo/sa/frontend"},
		{name: "other", id: "spiffe://cluster.local/ns/demo/sa/other"},
	}
	for i := range callers {
		callers[i].cert = svid(t, m, callers[i].id)
	}
	const api = "127.0.83.1:8080"
	testwait.Until(t, "api's sidecar to serve frontend", 20*time.Second, func() bool {
		got, _, err := send(api, callers[0].cert, "/hello")
		return err == nil && got == "allowed"
	})

	corpus := append([]string{}, fixedPaths...)
	corpus = append(corpus, generatePaths(mrand.New(mrand.NewPCG(uint64(seed), 11)), n)...)
	t.Logf("%d paths (%d generated, seed %d), %d callers", len(corpus), n, seed, len(callers))
	mismatches := 0
	for _, c := range callers {
		for _, p := range corpus {
			got, detail, err := send(api, c.cert, p)
			if err != nil {
				t.Fatalf("%s %q: %v", c.name, p, err)
			}
			ex := authz.Explain(snap, time.Now(), c.id, svc, &svc.Ports[0], "GET", p)
			if len(ex) != 1 {
				t.Fatalf("explain: %d workloads behind api, want 1", len(ex))
			}
			want := verdict(ex[0].Decision)
			if got != want {
				mismatches++
				norm, nerr := authz.NormalizePath(p)
				if mismatches <= 30 {
					t.Errorf("%s GET %q: Envoy %s (%s); explain %s (%s; normalized %q %v)", c.name, p, got, detail, want, ex[0].Decision.Reason, norm, nerr)
				}
			}
		}
	}
	if mismatches > 0 {
		t.Errorf("%d of %d answers differ between Envoy and explain", mismatches, len(corpus)*len(callers))
	}
	for _, p := range mustDeny {
		if got, detail, _ := send(api, callers[0].cert, p); got == "allowed" {
			t.Errorf("frontend GET %q reached the app (%s); a DENY rule names what the app reads it as", p, detail)
		}
	}
}

// verdict is explain's decision in the words send uses.
func verdict(d authz.Decision) string {
	switch {
	case d.Rejected != "":
		return "rejected"
	case d.Allowed:
		return "allowed"
	}
	return "denied"
}

// send makes one HTTP/1.1 request with the path byte for byte over mutual
// TLS and says who answered: "allowed" (the app, whatever its status),
// "denied" (the sidecar's 403) or "rejected" (the sidecar's 400), and a
// detail for messages.
func send(addr string, cert *tls.Certificate, rawPath string) (string, string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}})
	if _, err := io.WriteString(tc, "GET "+rawPath+" HTTP/1.1\r\nHost: api.demo\r\nConnection: close\r\n\r\n"); err != nil {
		return "", "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	detail := fmt.Sprintf("%d %q", resp.StatusCode, body)
	switch {
	case resp.Header.Get("x-envoy-upstream-service-time") != "":
		return "allowed", detail, nil
	case resp.StatusCode == http.StatusForbidden && strings.Contains(string(body), "RBAC: access denied"):
		return "denied", detail, nil
	case resp.StatusCode == http.StatusBadRequest:
		return "rejected", detail, nil
	}
	return "", "", fmt.Errorf("an answer that is neither the app's nor the sidecar's 403 or 400: %s %v", detail, resp.Header)
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		t.Fatalf("%s=%q: want a whole number", name, s)
	}
	return v
}

// Pieces of generated paths: names the rules are about, in several cases
// and encodings, and what normalization and path parameters work on.
var (
	pathNames = []string{"admin", "Admin", "ADMIN", "%61dmin", "adm%69n", "%41DMIN", "beta", "files", "private", "Private",
		"public", "users", "docs", "secret", "profile", "a", "b", "x", "42"}
	pathOddities = []string{".", "..", "...", "%2e", "%2E", "%2e%2e", ".%2e", "%2E.", ".;", "..;", ".;x", "..;x", "%2e;", "%2e%2e;",
		".%3b", "..%3B", ";", ";x", ";x=1", "%3b", "%3B", "%3bx", "", "\\", "\\..", "..\\", "a\\b",
		"%zz", "%", "%2", "%g0", "%00", "%2f", "%2F", "%5c", "%25", "%2541", "%%30%30", "%%41", "%20", "%7e", "~",
		"*", "@", ":", "'", "\"", "{", "`", "!"}
	pathSuffixes = []string{";x", "%3b", "%3Bx", ";", ".", "%2e", "%", "%zz", "\\", "%20"}
	// pathBytes make segments of stray escapes: "%%2e5", ".%3", "2%e".
	pathBytes = "%%%%..;;\\/02345abcefABCEF!$&'()*+,:=@[]_~\"<>^`{|}"
)

// generatePaths returns n request paths of one to six segments, each a
// name (often with a suffix), an oddity or a few random bytes, with now
// and then a trailing slash, a query or a fragment.
func generatePaths(r *mrand.Rand, n int) []string {
	out := make([]string, 0, n)
	for range n {
		var b strings.Builder
		for range 1 + r.IntN(6) {
			b.WriteByte('/')
			switch r.IntN(6) {
			case 0, 1:
				b.WriteString(pathNames[r.IntN(len(pathNames))])
			case 2:
				b.WriteString(pathNames[r.IntN(len(pathNames))] + pathSuffixes[r.IntN(len(pathSuffixes))])
			case 3:
				for range 1 + r.IntN(6) {
					b.WriteByte(pathBytes[r.IntN(len(pathBytes))])
				}
			default:
				b.WriteString(pathOddities[r.IntN(len(pathOddities))])
			}
		}
		switch r.IntN(12) {
		case 0:
			b.WriteByte('/')
		case 1:
			b.WriteString("?q=/admin")
		case 2:
			b.WriteString("#f")
		}
		out = append(out, b.String())
	}
	return out
}
