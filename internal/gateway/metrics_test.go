package gateway

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsSeriesCached: the series a request adds to are looked up once an endpoint
// and model and then reused; the counts are exact for every request, each status its own
// series, and a series nothing was counted in is not exported.
func TestMetricsSeriesCached(t *testing.T) {
	m := newMetrics()
	route := &Route{Model: "demo"}
	for i := 0; i < 5; i++ {
		m.observe(&reqState{endpoint: "chat", route: route, usage: Usage{PromptTokens: 3, CompletionTokens: 4}, upstreamWait: 1}, time.Time{})
	}
	m.observe(&reqState{endpoint: "chat", route: route, status: 429, code: "rate_limit_exceeded"}, time.Time{})
	m.observe(&reqState{endpoint: "embeddings", status: 401, code: "invalid_api_key"}, time.Time{})
	for _, c := range []struct {
		got  float64
		want float64
		what string
	}{
		{testutil.ToFloat64(m.requests.WithLabelValues("chat", "demo", "200")), 5, "chat demo 200"},
		{testutil.ToFloat64(m.requests.WithLabelValues("chat", "demo", "429")), 1, "chat demo 429"},
		{testutil.ToFloat64(m.requests.WithLabelValues("embeddings", "unrouted", "401")), 1, "embeddings unrouted 401"},
		{testutil.ToFloat64(m.tokens.WithLabelValues("demo", "prompt")), 15, "prompt tokens"},
		{testutil.ToFloat64(m.tokens.WithLabelValues("demo", "completion")), 20, "completion tokens"},
		{testutil.ToFloat64(m.denials.WithLabelValues("chat", "rate_limit_exceeded")), 1, "denials"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	// Series: requests chat/demo/200, chat/demo/429, embeddings/unrouted/401 (and the three
	// looked at above existed already); no token or upstream series for the unrouted model.
	if n := testutil.CollectAndCount(m.upstream); n != 1 {
		t.Errorf("%d upstream series, want 1 (demo)", n)
	}
	if n := testutil.CollectAndCount(m.tokens); n != 2 {
		t.Errorf("%d token series, want 2 (demo prompt, completion)", n)
	}
	if n := testutil.CollectAndCount(m.latency); n != 2 {
		t.Errorf("%d latency series, want 2 (chat, embeddings)", n)
	}
	s := m.series("chat", "demo")
	if s != m.series("chat", "demo") || s.ok.p.Load() == nil || s.upstream.p.Load() == nil {
		t.Fatal("the chat/demo series were not kept")
	}
}
