package detect

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/gateway"
)

// Auditor records alerts and the actions taken.
type Auditor interface {
	Submit(ctx context.Context, ev audit.Event) audit.Future
}

// Responder connects the engine to the gateway: it observes every request, records each
// alert in the audit log, and imposes the configured action on the principal for a while.
type Responder struct {
	e        *Engine
	audit    Auditor
	log      *slog.Logger
	duration time.Duration
	now      func() time.Time

	mu        sync.Mutex
	sanctions map[string]sanction
	index     int
}

type sanction struct {
	action string
	until  time.Time
}

var _ gateway.Detector = (*Responder)(nil)

// NewResponder imposes actions for duration (default 24h).
func NewResponder(e *Engine, a Auditor, log *slog.Logger, duration time.Duration) *Responder {
	if duration == 0 {
		duration = 24 * time.Hour
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Responder{e: e, audit: a, log: log, duration: duration, now: time.Now, sanctions: map[string]sanction{}}
}

// Observe implements gateway.Detector.
func (r *Responder) Observe(o gateway.Observation) {
	bias := map[string]float64(nil)
	if len(o.LogitBias) > 0 {
		bias = o.LogitBias
	}
	req := Request{TS: o.TS, Principal: o.Principal, IP: o.IP, Model: o.Model, Endpoint: o.Endpoint, Prompt: string(o.Prompt),
		Params:       Params{MaxTokens: o.MaxTokens, Logprobs: o.Logprobs, TopLogprobs: o.TopLogprobs, LogitBias: bias, N: o.N},
		PromptTokens: o.PromptTokens, CompletionTokens: o.CompletionTokens}
	r.mu.Lock()
	idx := r.index
	r.index++
	r.mu.Unlock()
	for _, a := range r.e.Observe(idx, &req) {
		r.act(a)
	}
}

var severity = map[string]int{"alert": 1, "throttle": 2, "strip_logprobs": 3, "suspend": 4}

func (r *Responder) act(a Alert) {
	r.log.Warn("ALERT extraction/abuse detector", "principal", a.Principal, "detector", a.Detector, "score", a.Score, "action", a.Action)
	ev := audit.Event{V: 1, TS: r.now().UTC(), Kind: "detect.alert", Decision: audit.Deny, Reason: a.Evidence,
		Actor:   map[string]string{"principal": "strongroom/detect"},
		Subject: map[string]string{"principal": a.Principal},
		Fields:  map[string]string{"detector": a.Detector, "score": fmt.Sprintf("%.4f", a.Score), "action": a.Action}}
	f := r.audit.Submit(context.Background(), ev)
	go f()
	if severity[a.Action] < 2 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.sanctions[a.Principal]
	if severity[a.Action] >= severity[cur.action] {
		r.sanctions[a.Principal] = sanction{action: a.Action, until: r.now().Add(r.duration)}
	}
}

// Sanction implements gateway.Sanctions: the action in force for a principal, or "".
func (r *Responder) Sanction(principal string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.sanctions[principal]
	if !ok {
		return ""
	}
	if r.now().After(s.until) {
		delete(r.sanctions, principal)
		return ""
	}
	return s.action
}
