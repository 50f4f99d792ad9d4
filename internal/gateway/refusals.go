package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strongroom/strongroom/internal/audit"
)

// Requests refused before the caller is known (no or bad credentials, unknown endpoint,
// wrong method) are many when someone floods the gateway, and each says little alone. Every
// one is counted (strongroom_gateway_unauthenticated_total); the log gets one summary event
// per source network and window instead of one entry each, so that a flood cannot grow the
// log at its own rate.

// maxSummaryNets bounds the networks tracked in a window; the rest share one summary.
const maxSummaryNets = 4096

type refusalKey struct {
	net    string // the source's /24 (IPv4) or /48 (IPv6), "" when unknown or past the cap
	status int
}

type refusalSum struct {
	count       int
	first, last time.Time
	country     string
}

type refusals struct {
	mu      sync.Mutex
	sums    map[refusalKey]*refusalSum
	counter *prometheus.CounterVec
}

func newRefusals() *refusals {
	return &refusals{sums: map[refusalKey]*refusalSum{},
		counter: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_gateway_unauthenticated_total",
			Help: "Requests refused before the caller was identified, by status; the log records them as summaries per source network."}, []string{"status"})}
}

// Collector exposes the gateway's metrics: requests, denials by reason, latency, upstream
// latency, tokens and unauthenticated refusals (register it on the control plane's registry).
func (g *Gateway) Collector() prometheus.Collector {
	return append(collectors{g.refused.counter}, g.metrics.all...)
}

func sourceNet(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	bits := 48
	if ip.Is4() {
		bits = 24
	}
	p, _ := ip.Prefix(bits)
	return p.String()
}

func (r *refusals) add(ip netip.Addr, country string, status int, now time.Time) {
	r.counter.WithLabelValues(fmt.Sprint(status)).Inc()
	k := refusalKey{net: sourceNet(ip), status: status}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.sums[k]; !ok && len(r.sums) >= maxSummaryNets {
		k.net, country = "", ""
	}
	s := r.sums[k]
	if s == nil {
		s = &refusalSum{first: now, country: country}
		r.sums[k] = s
	}
	s.count++
	s.last = now
}

// FlushRefusals records the summaries gathered so far and starts a new window.
func (g *Gateway) FlushRefusals(ctx context.Context) {
	g.refused.mu.Lock()
	sums := g.refused.sums
	g.refused.sums = map[refusalKey]*refusalSum{}
	g.refused.mu.Unlock()
	for k, s := range sums {
		net := k.net
		if net == "" {
			net = "unknown-or-overflow"
		}
		ev := audit.Event{V: 1, TS: s.first.UTC(), Kind: audit.KindUnauthenticated, Decision: audit.Deny,
			Reason:  "refused before the caller was identified",
			Actor:   map[string]string{"network": g.cfg.Redactor.Digest(net)},
			Subject: map[string]string{},
			Fields: map[string]string{"count": fmt.Sprint(s.count), "status": fmt.Sprint(k.status), "country": s.country,
				"first": s.first.UTC().Format(time.RFC3339Nano), "last": s.last.UTC().Format(time.RFC3339Nano)}}
		fut := g.cfg.Audit.Submit(context.WithoutCancel(ctx), ev)
		go fut()
	}
}

// SummarizeRefusals flushes the refusal summaries every interval, and once more when ctx
// ends.
func (g *Gateway) SummarizeRefusals(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			g.FlushRefusals(ctx)
			return
		case <-t.C:
			g.FlushRefusals(ctx)
		}
	}
}
