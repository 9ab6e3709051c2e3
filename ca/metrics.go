package ca

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	issued prometheus.Counter
	errors *prometheus.CounterVec
	expiry *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_ca_certificates_issued_total",
			Help: "Workload certificates issued.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_ca_issue_errors_total",
			Help: "Certificates the CA refused or failed to issue, by reason.",
		}, []string{"reason"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bulwark_ca_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the CA's own certificates expire (root: the earliest root).",
		}, []string{"cert"}),
	}
	if reg != nil {
		reg.MustRegister(m.issued, m.errors, m.expiry)
	}
	return m
}
