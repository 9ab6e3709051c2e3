package controlplane

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// listenMetrics binds the metrics listener, if configured.
func listenMetrics(cfg Config) (net.Listener, error) {
	if cfg.MetricsAddress == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", cfg.MetricsAddress)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	return l, nil
}

// metricsMux serves what may be reached from outside the host: metrics
// and health, nothing about proxies or certificates by name beyond the
// metrics' own labels.
func metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// warnIfExposed logs a warning when the debug listener is not on
// loopback: /debug answers anyone who reaches it.
func warnIfExposed(log *slog.Logger, a net.Addr) {
	if ta, ok := a.(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
		log.Warn("the debug endpoints (/debug/proxies, /debug/certificates) are unauthenticated and listen beyond loopback; "+
			"keep --http-address on 127.0.0.1 and serve probes and scrapers with --metrics-address", "http", a.String())
	}
}
