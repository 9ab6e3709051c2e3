package controlplane_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/bulwarkmesh/bulwark/controlplane"
)

// TestMetricsListenerHasNoDebug: the listener meant for probes and
// scrapers from outside serves /metrics and /healthz, and none of the
// /debug endpoints, which stay on the HTTP listener.
func TestMetricsListenerHasNoDebug(t *testing.T) {
	_, dir := newCA(t, meshTD)
	cp := start(t, controlplane.Config{CADir: dir, HTTPAddress: "127.0.0.1:0", MetricsAddress: "127.0.0.1:0"})
	get := func(addr, path string) int {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		path              string
		onHTTP, onMetrics int
	}{
		{"/metrics", 200, 200},
		{"/healthz", 200, 200},
		{"/debug/proxies", 200, 404},
		{"/debug/certificates", 200, 404},
	} {
		if got := get(cp.HTTPAddr.String(), tc.path); got != tc.onHTTP {
			t.Errorf("HTTP listener %s: %d, want %d", tc.path, got, tc.onHTTP)
		}
		if got := get(cp.MetricsAddr.String(), tc.path); got != tc.onMetrics {
			t.Errorf("metrics listener %s: %d, want %d", tc.path, got, tc.onMetrics)
		}
	}
}
