package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestProxyStatusCommand(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/proxies" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`[{"node":"demo/api-1","workload":"demo/api-1","identity":"spiffe://cluster.local/ns/demo/sa/api",
			"streams":1,"connectedAt":"2026-11-27T12:00:00Z","synced":false,
			"types":{"lds":{"sentVersion":"b","ackedVersion":"a","nackedVersion":"b","nackError":"bad listener"}}}]`))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	code, out, errOut := runCLI(t, "proxy-status", "--http-address", addr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"demo/api-1", "NACKED", "- (not issued here)", "0 of 1 proxies", "demo/api-1 rejected lds version b", "bad listener"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// Nobody listening: a clear error and exit 1.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	code, _, errOut = runCLI(t, "proxy-status", "--http-address", closed)
	if code != 1 || !strings.Contains(errOut, "ask the control plane") {
		t.Errorf("closed port: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := runCLI(t, "proxy-status", "extra"); code != 2 {
		t.Errorf("extra argument: exit %d, want 2", code)
	}
}
