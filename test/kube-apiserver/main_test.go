package main_test

// TestSmoke runs the real binary and talks to it with plain net/http, as a
// harness user would. Set KUBE_APISERVER_TEST_BIN to a built binary to skip
// building it here.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type readyInfo struct {
	Host     string `json:"host"`
	Token    string `json:"token"`
	CAFile   string `json:"caFile"`
	SAIssuer string `json:"saIssuer"`
}

func TestSmoke(t *testing.T) {
	bin := os.Getenv("KUBE_APISERVER_TEST_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "kube-apiserver-test")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}

	// No --dir: the binary must create and remove its own temporary directory.
	tmp := t.TempDir()
	readyFile := filepath.Join(t.TempDir(), "ready.json")
	cmd := exec.Command(bin, "--ready-file", readyFile)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr.String())
		}
	})

	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(2 * time.Minute):
		t.Fatal("no ready line within 2 minutes")
	}
	t.Logf("ready line after %v: %s", time.Since(start).Round(time.Millisecond), line)
	t.Logf("RSS after ready: %s", rss(cmd.Process.Pid))
	var info readyInfo
	if err := json.Unmarshal([]byte(line), &info); err != nil {
		t.Fatalf("ready line: %v", err)
	}
	if b, err := os.ReadFile(readyFile); err != nil || string(b) != line+"\n" {
		t.Errorf("ready file = %q, %v; want the ready line", b, err)
	}
	if info.SAIssuer != "https://kubernetes.default.svc.cluster.local" {
		t.Errorf("saIssuer = %q", info.SAIssuer)
	}

	caPEM, err := os.ReadFile(info.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", info.CAFile)
	}
	c := &client{t: t, host: info.Host, token: info.Token, http: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}}

	// (a) readiness.
	if code, body := c.do("GET", "/readyz", nil); code != 200 || string(body) != "ok" {
		t.Fatalf("/readyz: %d %s", code, body)
	}

	// (b) ServiceAccount, TokenRequest, TokenReview.
	c.mustCreate("/api/v1/namespaces", `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"smoke"}}`)
	c.mustCreate("/api/v1/namespaces/smoke/serviceaccounts", `{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"app"}}`)
	var tr struct {
		Status struct{ Token string }
	}
	c.decode(c.mustCreate("/api/v1/namespaces/smoke/serviceaccounts/app/token",
		`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["bulwark"],"expirationSeconds":3600}}`), &tr)
	if tr.Status.Token == "" {
		t.Fatal("TokenRequest returned no token")
	}
	review := func(audience string) (authenticated bool, username string) {
		var rv struct {
			Status struct {
				Authenticated bool
				User          struct{ Username string }
			}
		}
		c.decode(c.mustCreate("/apis/authentication.k8s.io/v1/tokenreviews", fmt.Sprintf(
			`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":%q,"audiences":[%q]}}`,
			tr.Status.Token, audience)), &rv)
		return rv.Status.Authenticated, rv.Status.User.Username
	}
	if ok, user := review("bulwark"); !ok || user != "system:serviceaccount:smoke:app" {
		t.Errorf("TokenReview(bulwark) = %v %q; want true system:serviceaccount:smoke:app", ok, user)
	}
	if ok, _ := review("someone-else"); ok {
		t.Error("TokenReview with a wrong audience authenticated")
	}
	// RBAC: the service account may authenticate but has no permissions.
	sa := *c
	sa.token = tr.Status.Token
	if code, body := sa.do("GET", "/api/v1/namespaces/smoke/pods", nil); code != 403 {
		t.Errorf("service account listing pods: %d %s; want 403", code, body)
	}

	// (c) CustomResourceDefinition with schema validation and status.
	c.mustCreate("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", `{
	  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
	  "metadata": {"name": "widgets.smoke.bulwark.dev"},
	  "spec": {"group": "smoke.bulwark.dev", "scope": "Namespaced",
	    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
	    "versions": [{"name": "v1", "served": true, "storage": true,
	      "subresources": {"status": {}},
	      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
	        "spec": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer", "minimum": 1}}},
	        "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]}}`)
	crdStart := time.Now()
	widgets := "/apis/smoke.bulwark.dev/v1/namespaces/smoke/widgets"
	for {
		code, body := c.do("POST", widgets, []byte(`{"apiVersion":"smoke.bulwark.dev/v1","kind":"Widget","metadata":{"name":"w1"},"spec":{"size":3}}`))
		if code == 201 {
			break
		}
		if time.Since(crdStart) > 30*time.Second {
			t.Fatalf("creating the first Widget: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("first custom object created %v after its CRD", time.Since(crdStart).Round(time.Millisecond))
	if code, body := c.do("POST", widgets, []byte(`{"apiVersion":"smoke.bulwark.dev/v1","kind":"Widget","metadata":{"name":"bad"},"spec":{"size":0}}`)); code != 422 {
		t.Errorf("invalid Widget: %d %s; want 422", code, body)
	}
	if code, body := c.do("PATCH", widgets+"/w1/status", []byte(`{"status":{"ready":true}}`)); code != 200 {
		t.Errorf("patching Widget status: %d %s", code, body)
	}

	// (d) A Pod with a service account is accepted and stays Pending.
	var pod struct {
		Spec struct {
			Volumes []struct{ Name string }
		}
		Status struct{ Phase string }
	}
	c.decode(c.mustCreate("/api/v1/namespaces/smoke/pods",
		`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p1"},"spec":{"serviceAccountName":"app","containers":[{"name":"c","image":"example.invalid/app"}]}}`), &pod)
	t.Logf("pod with serviceAccountName: phase %q, volumes %v", pod.Status.Phase, pod.Spec.Volumes)
	// Without serviceAccountName the pod uses "default", which nobody
	// creates here (no kube-controller-manager).
	code, body := c.do("POST", "/api/v1/namespaces/smoke/pods",
		[]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p2"},"spec":{"containers":[{"name":"c","image":"example.invalid/app"}]}}`))
	t.Logf("pod without serviceAccountName: %d %s", code, bytes.TrimSpace(body))

	t.Logf("RSS after the checks: %s", rss(cmd.Process.Pid))

	// Clean shutdown on SIGTERM, exit 0, temporary directory removed.
	stopStart := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("still running a minute after SIGTERM")
	}
	t.Logf("shutdown took %v", time.Since(stopStart).Round(time.Millisecond))
	if extra, ok := <-lines; ok {
		t.Errorf("more output on stdout after the ready line: %q", extra)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) != 0 {
		t.Errorf("temporary directory not removed: %v", entries)
	}
	if _, err := os.Stat(readyFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ready file not removed: %v", err)
	}
}

type client struct {
	t     *testing.T
	host  string
	token string
	http  *http.Client
}

func (c *client) do(method, path string, body []byte) (int, []byte) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.host+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	if method == "PATCH" {
		req.Header.Set("Content-Type", "application/merge-patch+json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, b
}

func (c *client) mustCreate(path, body string) []byte {
	c.t.Helper()
	code, b := c.do("POST", path, []byte(body))
	if code != 201 && code != 200 {
		c.t.Fatalf("POST %s: %d %s", path, code, b)
	}
	return b
}

func (c *client) decode(b []byte, v any) {
	c.t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		c.t.Fatalf("decoding %s: %v", b, err)
	}
}

// rss returns VmRSS from /proc/PID/status.
func rss(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
