package connlimit

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	open    prometheus.Gauge
	refused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_grpc_open_connections",
			Help: "Connections open on the control plane's gRPC port (ADS and the CA service), handshaking or serving.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_grpc_refused_connections_total",
			Help: "Connections to the gRPC port closed on accept because a cap was reached, by cap (" +
				ReasonMax + " or " + ReasonMaxPerSource + ").",
		}, []string{"reason"}),
	}
	// Both series exist from the start, so a rate() over them works
	// before the first refusal.
	m.refused.WithLabelValues(ReasonMax)
	m.refused.WithLabelValues(ReasonMaxPerSource)
	if reg != nil {
		reg.MustRegister(m.open, m.refused)
	}
	return m
}
