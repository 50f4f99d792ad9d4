package gateway

import (
	"context"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (OpenTelemetry), when Config.Tracer is set: one server span per inference
// request, continuing the client's W3C trace context (traceparent, tracestate), and one
// client span per engine call, whose context the engine receives in traceparent, so a
// trace crosses client → gateway → engine. Span attributes name the endpoint, the routed
// model and version, the decision and status, never the principal's prompt or output.
var propagator = propagation.TraceContext{}

// startSpan begins the request's span (a no-op span without a tracer).
func (g *Gateway) startSpan(r *http.Request, endpoint string) (context.Context, trace.Span) {
	if g.cfg.Tracer == nil {
		return r.Context(), trace.SpanFromContext(context.Background())
	}
	ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	return g.cfg.Tracer.Start(ctx, "gateway "+endpoint, trace.WithSpanKind(trace.SpanKindServer))
}

// endSpan records the request's outcome on its span and ends it.
func endSpan(span trace.Span, st *reqState) {
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{attribute.String("strongroom.endpoint", st.endpoint),
		attribute.String("strongroom.decision", st.decision), attribute.Int("http.response.status_code", statusOf(st))}
	if st.route != nil {
		attrs = append(attrs, attribute.String("gen_ai.request.model", st.route.Model), attribute.String("strongroom.model_version", st.rec.Version))
	}
	if st.code != "" {
		attrs = append(attrs, attribute.String("error.type", st.code))
	}
	if st.usage.PromptTokens > 0 || st.usage.CompletionTokens > 0 {
		attrs = append(attrs, attribute.Int("gen_ai.usage.input_tokens", st.usage.PromptTokens), attribute.Int("gen_ai.usage.output_tokens", st.usage.CompletionTokens))
	}
	span.SetAttributes(attrs...)
	if statusOf(st) >= 500 {
		span.SetStatus(codes.Error, strconv.Itoa(statusOf(st)))
	}
	span.End()
}

// upstreamSpan begins the engine call's span under the request's and puts its context in
// the engine request's headers.
func (g *Gateway) upstreamSpan(ctx context.Context, req *http.Request, base string) trace.Span {
	if g.cfg.Tracer == nil {
		return trace.SpanFromContext(context.Background())
	}
	ctx, span := g.cfg.Tracer.Start(ctx, "upstream", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("server.address", req.URL.Host)))
	propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
	return span
}

func statusOf(st *reqState) int {
	if st.status == 0 {
		return http.StatusOK
	}
	return st.status
}
