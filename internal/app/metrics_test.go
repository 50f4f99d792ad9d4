package app

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// TestMetrics: after one served and one refused request, the registry the control plane
// serves at /metrics has what an operator graphs, with the values those requests imply.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	a, _ := initApp(t, ctx, nil)
	key := alice(t, ctx, a)
	send := serveGateway(t, ctx, a)
	if got := send(key); got != http.StatusOK {
		t.Fatalf("status %d", got)
	}
	if got := send("sr_0000000000000000.bogus"); got != http.StatusUnauthorized {
		t.Fatalf("status %d", got)
	}
	// The gateway counts a request when its handler returns, just after the client has
	// the answer: gather until the second request is counted too.
	var mfs []*dto.MetricFamily
	count := func() float64 {
		var err error
		if mfs, err = a.Metrics.Gather(); err != nil {
			t.Fatal(err)
		}
		v, _ := value(mfs, "strongroom_gateway_request_duration_seconds", map[string]string{"endpoint": "chat"})
		return v
	}
	for deadline := time.Now().Add(time.Minute); count() < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"strongroom_gateway_requests_total", map[string]string{"endpoint": "chat", "model": "m", "code": "200"}, 1},
		{"strongroom_gateway_denials_total", map[string]string{"reason": "invalid_api_key"}, 1},
		{"strongroom_gateway_request_duration_seconds", map[string]string{"endpoint": "chat"}, 2},
		{"strongroom_gateway_upstream_duration_seconds", map[string]string{"model": "m"}, 1},
		{"strongroom_gateway_tokens_total", map[string]string{"model": "m", "kind": "completion"}, 1},
		{"strongroom_audit_durable_seconds", nil, 1},
		{"strongroom_audit_inflight_events", nil, 0},
		{"strongroom_audit_request_records_written", nil, 1}, // the default: written records
		{"strongroom_custody_leases_live", nil, 0},
		{"strongroom_detect_sanctions_in_force", nil, 0},
	} {
		v, ok := value(mfs, c.name, c.labels)
		if !ok || v < c.min {
			var names []string
			for _, mf := range mfs {
				names = append(names, mf.GetName())
			}
			t.Errorf("%s%v = %v (present %v), want ≥ %v; registry has %s", c.name, c.labels, v, ok, c.min, strings.Join(names, " "))
		}
	}
}

func value(mfs []*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.Label {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}
