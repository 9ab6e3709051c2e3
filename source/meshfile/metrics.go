package meshfile

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reloads     *prometheus.CounterVec
	lastOK      prometheus.Gauge
	lastSuccess prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_meshfile_reloads_total",
			Help: "Mesh file loads, by result (success or failure). A failure leaves the last good state serving.",
		}, []string{"result"}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_meshfile_last_reload_successful",
			Help: "1 if the last load of the mesh files succeeded, 0 if it was refused.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_meshfile_last_success_timestamp_seconds",
			Help: "Unix time of the last successful load of the mesh files.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.reloads, m.lastOK, m.lastSuccess)
	}
	return m
}
