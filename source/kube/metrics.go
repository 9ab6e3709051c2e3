package kube

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	rebuilds        prometheus.Counter
	rebuildSeconds  prometheus.Histogram
	watchErrors     prometheus.Counter
	invalidPolicies prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_kube_model_writes_total",
			Help: "Coalesced writes of the cluster's state to the model.",
		}),
		rebuildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bulwark_kube_model_write_duration_seconds",
			Help:    "Time to map the informer caches to the model and write it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		watchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_kube_watch_errors_total",
			Help: "Broken watches; each informer re-lists and converges.",
		}),
		invalidPolicies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_kube_invalid_policies_total",
			Help: "Policy objects refused, as invalid or in conflict with another (counted per evaluation).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.rebuilds, m.rebuildSeconds, m.watchErrors, m.invalidPolicies)
	}
	return m
}
