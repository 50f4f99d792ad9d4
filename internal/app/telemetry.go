package app

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/redact"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Tracer is the process's OpenTelemetry tracer when telemetry.otlp_endpoint is set (spans
// batched to that OTLP/HTTP collector, flushed by Close), else nil: no tracing, no cost.
func (a *App) Tracer() (trace.Tracer, error) {
	a.tracerMu.Lock()
	defer a.tracerMu.Unlock()
	ep := a.Config.Telemetry.OTLPEndpoint
	if ep == "" || a.tracer != nil {
		return a.tracer, nil
	}
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("telemetry.otlp_endpoint %s: want http(s)://HOST:PORT", redact.URL(ep))
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(u.Host), otlptracehttp.WithTimeout(10 * time.Second)}
	if u.Scheme == "http" {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	if u.Path != "" && u.Path != "/" {
		opts = append(opts, otlptracehttp.WithURLPath(u.Path))
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", redact.Error(err, redact.URL, ep))
	}
	name := a.Config.Telemetry.ServiceName
	if name == "" {
		name = "strongroom"
	}
	a.tracerProvider = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))))
	a.tracer = a.tracerProvider.Tracer("github.com/strongroom/strongroom/internal/gateway")
	return a.tracer, nil
}

// closeTracing flushes and stops the tracer provider (bounded: a collector that is down
// must not hold up shutdown).
func (a *App) closeTracing() error {
	if a.tracerProvider == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return a.tracerProvider.Shutdown(ctx)
}

// RequestRecords is the process's one batcher of request records (audit.Batcher): the
// gateway's per-request events, one log entry per batch; Close commits the last batch.
func (a *App) RequestRecords() *audit.Batcher {
	a.batchOnce.Do(func() {
		ac := a.Config.Audit
		a.batcher = audit.NewBatcher(a.AuditLog, a.AuditLog.Bundles(), audit.BatcherConfig{MaxRecords: ac.RequestBatchRecords,
			MaxDelay: ac.RequestBatchDelay.Duration, Journal: a.requestJournal(), JournalKey: a.journalKey,
			PrewriteSegments: ac.JournalPrewrittenSegments, Written: ac.RequestDurability != "synced",
			SyncEvery: ac.RequestSyncInterval.Duration})
	})
	return a.batcher
}
