package gateway

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are what an operator graphs for a gateway (Prometheus naming: base units,
// _total counters, bounded labels: endpoint, the route's model, the refusal's error code).
type metrics struct {
	requests *prometheus.CounterVec   // endpoint, model, code (HTTP status)
	denials  *prometheus.CounterVec   // endpoint, reason (the OpenAI error code answered)
	latency  *prometheus.HistogramVec // endpoint
	upstream *prometheus.HistogramVec // model: time to the engine's response headers
	tokens   *prometheus.CounterVec   // model, kind (prompt, completion)
	all      []prometheus.Collector
}

func newMetrics() *metrics {
	buckets := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_gateway_requests_total",
			Help: "Inference requests answered, by endpoint, routed model and HTTP status."}, []string{"endpoint", "model", "code"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_gateway_denials_total",
			Help: "Requests refused, by endpoint and reason (the error code answered: permission_denied, rate_limit_exceeded, model_not_found, invalid_request, ...)."}, []string{"endpoint", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "strongroom_gateway_request_duration_seconds",
			Help: "Time from request to the end of the answer (streams included), by endpoint.", Buckets: buckets}, []string{"endpoint"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "strongroom_gateway_upstream_duration_seconds",
			Help: "Time from forwarding to the engine's response headers, by routed model.", Buckets: buckets}, []string{"model"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_gateway_tokens_total",
			Help: "Tokens served, by routed model and kind (prompt, completion); estimated where the engine did not say."}, []string{"model", "kind"}),
	}
	m.all = []prometheus.Collector{m.requests, m.denials, m.latency, m.upstream, m.tokens}
	return m
}

// observe counts one finished request.
func (m *metrics) observe(st *reqState, end time.Time) {
	model := "unrouted"
	if st.route != nil {
		model = st.route.Model
	}
	m.requests.WithLabelValues(st.endpoint, model, strconv.Itoa(statusOf(st))).Inc()
	if st.code != "" {
		m.denials.WithLabelValues(st.endpoint, st.code).Inc()
	}
	m.latency.WithLabelValues(st.endpoint).Observe(end.Sub(st.start).Seconds())
	if st.upstreamWait > 0 {
		m.upstream.WithLabelValues(model).Observe(st.upstreamWait.Seconds())
	}
	if st.usage.PromptTokens > 0 {
		m.tokens.WithLabelValues(model, "prompt").Add(float64(st.usage.PromptTokens))
	}
	if st.usage.CompletionTokens > 0 {
		m.tokens.WithLabelValues(model, "completion").Add(float64(st.usage.CompletionTokens))
	}
}

// collectors is several collectors registered as one.
type collectors []prometheus.Collector

func (cs collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range cs {
		c.Describe(ch)
	}
}

func (cs collectors) Collect(ch chan<- prometheus.Metric) {
	for _, c := range cs {
		c.Collect(ch)
	}
}
