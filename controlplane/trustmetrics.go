package controlplane

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwarkmesh/bulwark/ca/trust"
)

// trustMetrics are the trust lifecycle's counters; the gauges of the
// State itself are read at scrape time (trustCollector).
type trustMetrics struct {
	events     *prometheus.CounterVec
	loadErrors prometheus.Counter
	conflicts  prometheus.Counter
	waiting    prometheus.Gauge
	expiring   prometheus.Gauge
}

func newTrustMetrics(reg prometheus.Registerer) *trustMetrics {
	m := &trustMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bulwark_trust_events_total",
			Help: "Changes of the trust lifecycle this control plane made, by action and whether a gate was forced.",
		}, []string{"action", "forced"}),
		loadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_trust_state_load_errors_total",
			Help: "Loads of the stored trust state that failed or could not be used; the last good state stays in use.",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bulwark_trust_state_save_conflicts_total",
			Help: "Saves of the trust state refused because another writer saved first (the step is redone on the new state).",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_trust_rotation_waiting",
			Help: "1 while the rotation in progress waits on a gate (see bulwark ca status for the laggards).",
		}),
		expiring: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bulwark_trust_intermediate_expiring",
			Help: "1 when the active signing certificate expires within 30 days and nothing will renew it automatically.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.events, m.loadErrors, m.conflicts, m.waiting, m.expiring)
	}
	return m
}

var (
	seqDesc = prometheus.NewDesc("bulwark_trust_bundle_sequence",
		"The trust bundle's sequence number in use.", nil, nil)
	authExpiryDesc = prometheus.NewDesc("bulwark_trust_authority_expiry_timestamp_seconds",
		"Unix time at which an authority's certificate expires (cert: signing or root), by authority and phase.",
		[]string{"authority", "phase", "cert"}, nil)
	proxiesDesc = prometheus.NewDesc("bulwark_trust_proxies",
		"Connected proxies by the bundle sequence their Envoy acknowledged (0: none reported).",
		[]string{"sequence"}, nil)
	crlProblemsDesc = prometheus.NewDesc("bulwark_trust_crl_problems",
		"Imported CRLs that did not validate (kept for status; they change nothing).", nil, nil)
	revocationsDesc = prometheus.NewDesc("bulwark_trust_revocations",
		"Entries of the revocation list.", nil, nil)
)

// trustCollector reads the State in use and the evidence at scrape time.
type trustCollector struct{ t *trustManager }

func (trustCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{seqDesc, authExpiryDesc, proxiesDesc, crlProblemsDesc, revocationsDesc} {
		ch <- d
	}
}

func (c trustCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.t.auth.State()
	ch <- prometheus.MustNewConstMetric(seqDesc, prometheus.GaugeValue, float64(st.Sequence))
	for _, a := range st.Authorities {
		ch <- prometheus.MustNewConstMetric(authExpiryDesc, prometheus.GaugeValue, float64(a.Signing().NotAfter.Unix()), a.ID, string(a.Phase), "signing")
		ch <- prometheus.MustNewConstMetric(authExpiryDesc, prometheus.GaugeValue, float64(a.Root.NotAfter.Unix()), a.ID, string(a.Phase), "root")
	}
	problems := 0
	for _, x := range st.ImportedCRLs {
		if x.Problem != "" {
			problems++
		}
	}
	ch <- prometheus.MustNewConstMetric(crlProblemsDesc, prometheus.GaugeValue, float64(problems))
	ch <- prometheus.MustNewConstMetric(revocationsDesc, prometheus.GaugeValue, float64(len(st.Revocations)))
	for _, h := range holders(c.t.localAcks(st)) {
		ch <- prometheus.MustNewConstMetric(proxiesDesc, prometheus.GaugeValue, float64(h.n), strconv.FormatUint(h.seq, 10))
	}
}

// holder is how many proxies hold one bundle sequence.
type holder struct {
	seq uint64
	n   int
}

// holders counts proxies by the sequence their Envoy acknowledged
// (0 for one that reported nothing), highest sequence first.
func holders(acks []trust.ProxyAck) []holder {
	count := map[uint64]int{}
	for _, a := range acks {
		count[ackedSeq(a)]++
	}
	out := make([]holder, 0, len(count))
	for s, n := range count {
		out = append(out, holder{s, n})
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].seq > out[j-1].seq; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// ackedSeq is the bundle a proxy holds as the gates count it: what its
// Envoy acknowledged, and no more than its agent holds; 0 unreported.
func ackedSeq(a trust.ProxyAck) uint64 {
	if !a.Reported {
		return 0
	}
	return min(a.ProxySeq, a.AgentSeq)
}
