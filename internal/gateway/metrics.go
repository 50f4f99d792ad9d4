package gateway

import (
	"strconv"
	"sync"
	"sync/atomic"
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
	// byRoute holds the series of an endpoint and a model (routeSeries), looked up once:
	// five WithLabelValues a request (each hashes its labels, checks them and takes the
	// vector's lock) were ~1.5 % of the gateway's CPU under load (thirty-ninth session).
	byRoute sync.Map // routeKey -> *routeSeries
}

type routeKey struct{ endpoint, model string }

// routeSeries are the series a request of one endpoint and model adds to, each made on
// its first use (as WithLabelValues makes it: a series nothing was counted in is not
// exported).
type routeSeries struct {
	ok                 lazy[prometheus.Counter] // requests answered 200
	latency, upstream  lazy[prometheus.Observer]
	prompt, completion lazy[prometheus.Counter]
}

func (m *metrics) series(endpoint, model string) *routeSeries {
	k := routeKey{endpoint, model}
	if s, ok := m.byRoute.Load(k); ok {
		return s.(*routeSeries)
	}
	v, _ := m.byRoute.LoadOrStore(k, &routeSeries{})
	return v.(*routeSeries)
}

// lazy is a value made on its first use (by whichever caller comes first; the others'
// are dropped).
type lazy[T any] struct{ p atomic.Pointer[T] }

func (l *lazy[T]) get(mk func() T) T {
	if p := l.p.Load(); p != nil {
		return *p
	}
	v := mk()
	l.p.CompareAndSwap(nil, &v)
	return *l.p.Load()
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
	s, ep := m.series(st.endpoint, model), st.endpoint
	if code := statusOf(st); code == 200 {
		s.ok.get(func() prometheus.Counter { return m.requests.WithLabelValues(ep, model, "200") }).Inc()
	} else {
		m.requests.WithLabelValues(ep, model, strconv.Itoa(code)).Inc()
	}
	if st.code != "" {
		m.denials.WithLabelValues(ep, st.code).Inc()
	}
	s.latency.get(func() prometheus.Observer { return m.latency.WithLabelValues(ep) }).Observe(end.Sub(st.start).Seconds())
	if st.upstreamWait > 0 {
		s.upstream.get(func() prometheus.Observer { return m.upstream.WithLabelValues(model) }).Observe(st.upstreamWait.Seconds())
	}
	if st.usage.PromptTokens > 0 {
		s.prompt.get(func() prometheus.Counter { return m.tokens.WithLabelValues(model, "prompt") }).Add(float64(st.usage.PromptTokens))
	}
	if st.usage.CompletionTokens > 0 {
		s.completion.get(func() prometheus.Counter { return m.tokens.WithLabelValues(model, "completion") }).Add(float64(st.usage.CompletionTokens))
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
