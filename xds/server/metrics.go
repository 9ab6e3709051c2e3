package server

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	connected     prometheus.Gauge
	responses     *prometheus.CounterVec
	acks          *prometheus.CounterVec
	nacks         *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	inconsistent  prometheus.Counter
	syncs         prometheus.Counter
	syncDuration  prometheus.Histogram
	snapshotsSet  prometheus.Counter
	translateErrs prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_xds_connected_proxies",
			Help: "Proxies with at least one open ADS stream.",
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_xds_responses_total",
			Help: "Discovery responses sent, by resource type.",
		}, []string{"type"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_xds_acks_total",
			Help: "Discovery responses acknowledged by proxies, by resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_xds_nacks_total",
			Help: "Discovery responses rejected by proxies, by resource type.",
		}, []string{"type"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_xds_rejected_streams_total",
			Help: "ADS streams closed by the control plane, by reason.",
		}, []string{"reason"}),
		inconsistent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_xds_inconsistent_configs_total",
			Help: "Per-proxy configurations withheld because they failed the consistency check.",
		}),
		syncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_xds_syncs_total",
			Help: "Passes that translated the model for connected proxies.",
		}),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bulwark_xds_sync_duration_seconds",
			Help:    "Time to translate and publish one pass for every affected proxy.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		snapshotsSet: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_xds_snapshots_set_total",
			Help: "Per-proxy snapshots that changed and were handed to the cache.",
		}),
		translateErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_xds_translate_errors_total",
			Help: "Per-proxy translations that failed.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.responses, m.acks, m.nacks, m.rejected, m.inconsistent,
			m.syncs, m.syncDuration, m.snapshotsSet, m.translateErrs)
	}
	return m
}
