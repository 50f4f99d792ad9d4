package detect

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/redact"
	"github.com/strongroom/strongroom/internal/store"
)

// Auditor records alerts and the actions taken.
type Auditor interface {
	Submit(ctx context.Context, ev audit.Event) audit.Future
}

// IncidentStore keeps incident records and sanctions, and finds a principal's recent
// requests in the log.
type IncidentStore interface {
	CreateIncident(ctx context.Context, in store.Incident) error
	SearchAudit(ctx context.Context, q store.AuditQuery) ([]store.AuditEvent, error)
	AuditIndexed(ctx context.Context) (uint64, error)
	PutSanction(ctx context.Context, s store.Sanction) error
	ListSanctions(ctx context.Context, now time.Time) ([]store.Sanction, error)
}

// ResponderConfig wires a Responder. Zero values take defaults.
type ResponderConfig struct {
	Audit     Auditor       // required
	Incidents IncidentStore // nil: no incident records
	// Webhook receives every incident as JSON, signed with WebhookSecret in the header
	// X-Strongroom-Signature: sha256=<hex HMAC-SHA256 of the body>.
	Webhook       string
	WebhookSecret []byte
	HTTP          *http.Client
	Duration      time.Duration // how long an action holds; default 24h
	Log           *slog.Logger
	Now           func() time.Time
	// EvidenceWait bounds how long an incident waits for the search index to reach its
	// alert (the index trails the log by up to a second), so that the requests just before
	// the alert are part of the evidence; default 5s.
	EvidenceWait time.Duration
	// ClaimCheck is how long a replica that lost an alert's claim on the bus waits for the
	// winner's record of it in the shared audit index before it records the alert itself
	// (Redis decides claims, and Redis is outside data); default 20s.
	ClaimCheck time.Duration
	// Records, if set, batches request records (audit.Batcher): an incident first commits
	// what it holds (Barrier), then waits RecordsDelay for other replicas' batches and
	// takes the log's size then (LogSize) as how far the index must reach, so that the
	// requests before the alert, on every replica, are in the evidence.
	Records interface {
		Barrier(ctx context.Context) (uint64, bool, error)
	}
	RecordsDelay time.Duration
	LogSize      func(ctx context.Context) (uint64, error)
	// Bus shares detection between gateway replicas (see Bus); nil: this process's
	// traffic only. Run must be running for shared detection.
	Bus Bus
	// Metrics, if set, receives the bus's health: strongroom_detect_bus_degraded (1 while
	// this replica detects alone) and strongroom_detect_bus_overflow_total.
	Metrics prometheus.Registerer
}

// Responder connects the engine to the gateway: it observes every request, records each
// alert and each action in the audit log, opens an incident pointing at the log entries
// that are its evidence, calls the webhook, and imposes the configured action on the
// principal for a while.
type Responder struct {
	e   *Engine
	cfg ResponderConfig

	mu        sync.Mutex
	sanctions map[string]sanction // imposed by this process
	shared    map[string]sanction // in the store: imposed by any gateway, or lifted
	index     int
	modes     map[string]string // live detector modes (SetModes), else the engine's config
	pending   sync.WaitGroup
	relay     *relay                 // nil without a bus
	checks    atomic.Int64           // lost claims waiting for their winner's record (followClaim)
	alerts    *prometheus.CounterVec // detector, action (what was imposed; "alert" in shadow), mode
}

type sanction struct {
	action       obs.Action
	since, until time.Time
	persisted    bool
}

var (
	_ obs.Observer = (*Responder)(nil)
)

// NewResponder returns a responder for e.
func NewResponder(e *Engine, cfg ResponderConfig) *Responder {
	if cfg.Duration == 0 {
		cfg.Duration = 24 * time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.EvidenceWait == 0 {
		cfg.EvidenceWait = 5 * time.Second
	}
	if cfg.ClaimCheck == 0 {
		cfg.ClaimCheck = 20 * time.Second
	}
	r := &Responder{e: e, cfg: cfg, sanctions: map[string]sanction{}, shared: map[string]sanction{},
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "strongroom_detect_alerts_total",
			Help: "Detector alerts recorded, by detector, action imposed (alert: none) and mode (enforce, shadow)."}, []string{"detector", "action", "mode"})}
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(r.alerts); err != nil {
			cfg.Log.Error("detect: metrics", "err", err)
		}
	}
	if cfg.Bus != nil {
		r.relay = newRelay(cfg.Bus, cfg.Now())
		if cfg.Metrics != nil {
			registerBusMetrics(r, cfg.Metrics)
		}
	}
	return r
}

// registerBusMetrics exposes the bus's health (a failure to register is logged: metrics
// are not worth refusing to detect).
func registerBusMetrics(r *Responder, reg prometheus.Registerer) {
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "strongroom_detect_bus_degraded",
			Help: "1 while this gateway detects on its own traffic only because the detection bus (Redis) failed."},
			func() float64 {
				if r.Degraded() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "strongroom_detect_bus_overflow_total",
			Help: "Requests detected on locally because the queue to the detection bus was full."},
			func() float64 { return float64(r.relay.dropped.Load()) }),
	}
	cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "strongroom_detect_bus_lost_total",
		Help: "Records this gateway published that did not come back from the detection bus in order or in time (deleted, trimmed or hidden in Redis, or a lagging reader): detected on locally instead."},
		func() float64 { return float64(r.relay.lost.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "strongroom_detect_bus_gaps_total",
			Help: "Times another gateway's records on the detection bus were found missing or repeated (deleted, trimmed or hidden in Redis): this gateway's detection missed part of that one's traffic."},
			func() float64 { return float64(r.relay.gaps.Load()) }))
	if rb, ok := r.relay.bus.(interface{ Rejected() int64 }); ok {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "strongroom_detect_bus_rejected_total",
			Help: "Records on the detection bus refused: not sealed under this fleet's key (written or altered in Redis, or another deployment's), or repeated."},
			func() float64 { return float64(rb.Rejected()) }))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			r.cfg.Log.Error("detect: metrics", "err", err)
		}
	}
}

// FromObservation is the detectors' view of a gateway request.
func FromObservation(o obs.Observation) Request {
	bias := map[string]float64(nil)
	if len(o.LogitBias) > 0 {
		bias = o.LogitBias
	}
	return Request{TS: o.TS, Principal: o.Principal, IP: o.IP, Model: o.Model, Endpoint: o.Endpoint, Prompt: string(o.Prompt),
		Params:       Params{MaxTokens: o.MaxTokens, Logprobs: o.Logprobs, TopLogprobs: o.TopLogprobs, LogitBias: bias, N: o.N},
		PromptTokens: o.PromptTokens, CompletionTokens: o.CompletionTokens}
}

// Observe implements obs.Observer.
func (r *Responder) Observe(o obs.Observation) {
	req := FromObservation(o)
	if r.relay != nil {
		r.observeShared(&req)
		return
	}
	f := ExtractFeatures(&req)
	r.observeLocal(&req, &f, actRecord)
}

// Run clusters principals every interval (hydra campaigns), reloads the shared
// sanctions every 2 seconds and, with a bus, publishes and reads observations, until ctx
// ends.
func (r *Responder) Run(ctx context.Context, every time.Duration) {
	// The bus's goroutines end with ctx, and Run returns only after them: nothing of the
	// Responder still runs once Run has returned.
	var bus sync.WaitGroup
	defer bus.Wait()
	if r.relay != nil {
		bus.Go(func() { r.publish(ctx) })
		bus.Go(func() { r.consume(ctx) })
	}
	t := time.NewTicker(every)
	defer t.Stop()
	reload := time.NewTicker(2 * time.Second)
	defer reload.Stop()
	r.Refresh(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, a := range r.e.CampaignAlerts(-1, r.cfg.Now()) {
				r.actClaimed(a)
			}
		case <-reload.C:
			r.Refresh(ctx)
		}
	}
}

// Refresh loads the sanctions in force from the store: those other gateways imposed
// apply here too, and a sanction this process imposed that is gone from the store was
// lifted. A store that cannot be read keeps what is known (sanctions fail closed).
func (r *Responder) Refresh(ctx context.Context) {
	if r.cfg.Incidents == nil {
		return
	}
	ss, err := r.cfg.Incidents.ListSanctions(ctx, r.cfg.Now())
	if err != nil {
		r.cfg.Log.Error("detect: loading sanctions", "err", err)
		return
	}
	shared := make(map[string]sanction, len(ss))
	for _, s := range ss {
		shared[s.Principal] = sanction{action: obs.Action(s.Action), since: s.Since, until: s.Until, persisted: true}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.shared = shared
	for p, s := range r.sanctions {
		if _, ok := shared[p]; s.persisted && !ok {
			delete(r.sanctions, p)
		}
	}
}

// Wait waits for incident records and webhooks in flight (tests, shutdown).
func (r *Responder) Wait() { r.pending.Wait() }

func (r *Responder) act(a Alert) { r.actAs(a, true) }

// SetModes replaces the detectors' modes (Config.Modes) while running: promoting a
// detector from shadow to enforce applies to the next alert.
func (r *Responder) SetModes(m map[string]string) {
	r.mu.Lock()
	r.modes = m
	r.mu.Unlock()
}

// Mode is "shadow" or "enforce" for detector d now.
func (r *Responder) Mode(d string) string {
	r.mu.Lock()
	m := r.modes
	r.mu.Unlock()
	if m == nil {
		return r.e.cfg.Mode(d)
	}
	c := Config{Modes: m}
	return c.Mode(d)
}

// actAs imposes a's action on the principal in this process; with record (this replica
// raised or claimed the alert) it also writes the alert and action to the audit log, shares
// the sanction through the store and opens the incident.
func (r *Responder) actAs(a Alert, record bool) {
	// Counted before its sanction shows: whoever sees the sanction and then calls Wait
	// waits for its records too (an Add after a Wait had begun was a race the race detector
	// reported in TestSharedDetectionAcrossReplicas, and Wait could miss the records).
	r.pending.Add(1)
	now := r.cfg.Now().UTC()
	var imposed *store.Sanction
	mode := r.Mode(a.Detector)
	if a.Action.Sanction() && mode == "enforce" {
		r.mu.Lock()
		cur := r.sanctions[a.Principal]
		if a.Action.Severity() >= cur.action.Severity() || now.After(cur.until) {
			r.sanctions[a.Principal] = sanction{action: a.Action, since: now, until: now.Add(r.cfg.Duration)}
			imposed = &store.Sanction{Principal: a.Principal, Action: string(a.Action), Detector: a.Detector, Since: now, Until: now.Add(r.cfg.Duration)}
		}
		r.mu.Unlock()
	}
	if !record {
		r.pending.Done()
		return
	}
	fields := map[string]string{"detector": a.Detector, "score": strconv.FormatFloat(a.Score, 'f', 4, 64), "action": string(a.Action),
		"step": strconv.Itoa(max(a.Step, 1)), "mode": mode}
	if mode != "enforce" && a.Action != obs.Alert { // shadow: what would have been imposed, nothing is
		fields["action"], fields["would_action"] = string(obs.Alert), string(a.Action)
		a.Evidence = "[shadow mode: would " + string(a.Action) + "] " + a.Evidence
		a.Action = obs.Alert
	}
	r.alerts.WithLabelValues(a.Detector, string(a.Action), mode).Inc()
	r.cfg.Log.Warn("ALERT extraction/abuse detector", "principal", a.Principal, "detector", a.Detector, "score", a.Score, "action", a.Action,
		"step", a.Step, "mode", mode)
	alert := r.cfg.Audit.Submit(context.Background(), audit.Event{V: 1, TS: now, Kind: audit.KindDetectAlert, Decision: audit.Deny, Reason: a.Evidence,
		Actor:   map[string]string{"principal": "strongroom/detect"},
		Subject: map[string]string{"principal": a.Principal},
		Fields:  fields})
	var action audit.Future
	if a.Action.Sanction() && mode == "enforce" {
		action = r.cfg.Audit.Submit(context.Background(), audit.Event{V: 1, TS: now, Kind: audit.KindDetectAction, Decision: audit.Deny,
			Reason:  string(a.Action) + " for " + r.cfg.Duration.String(),
			Actor:   map[string]string{"principal": "strongroom/detect"},
			Subject: map[string]string{"principal": a.Principal},
			Fields:  map[string]string{"detector": a.Detector, "action": string(a.Action), "until": now.Add(r.cfg.Duration).Format(time.RFC3339)}})
	}
	go func() {
		defer r.pending.Done()
		if imposed != nil && r.cfg.Incidents != nil {
			if err := r.cfg.Incidents.PutSanction(context.Background(), *imposed); err != nil {
				r.cfg.Log.Error("detect: sanction not shared", "principal", imposed.Principal, "err", err)
			} else {
				r.mu.Lock()
				if s, ok := r.sanctions[imposed.Principal]; ok && s.since.Equal(imposed.Since) {
					s.persisted = true
					r.sanctions[imposed.Principal] = s
				}
				r.mu.Unlock()
			}
		}
		r.openIncident(a, now, alert, action)
	}()
}

// Incident is the JSON a webhook receives.
type Incident struct {
	ID        string     `json:"id"`
	Principal string     `json:"principal"`
	Detector  string     `json:"detector"`
	Action    obs.Action `json:"action"`
	Score     float64    `json:"score"`
	Summary   string     `json:"summary"`
	Evidence  []uint64   `json:"evidence"` // audit-log indices
	OpenedAt  time.Time  `json:"opened_at"`
}

// openIncident waits for the alert (and action) to be in the log, collects the principal's
// requests of the last hour from the search index as further evidence, stores the
// incident and calls the webhook.
func (r *Responder) openIncident(a Alert, now time.Time, alert, action audit.Future) {
	var ev []uint64
	for _, f := range []audit.Future{alert, action} {
		if f == nil {
			continue
		}
		if idx, err := f(); err == nil {
			ev = append(ev, idx)
		} else {
			r.cfg.Log.Error("detect: alert not recorded", "principal", a.Principal, "err", err)
		}
	}
	if len(ev) > 0 && r.cfg.Incidents != nil {
		upTo := ev[0]
		if r.cfg.Records != nil {
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.EvidenceWait)
			if idx, ok, err := r.cfg.Records.Barrier(ctx); err == nil && ok {
				upTo = max(upTo, idx)
			}
			cancel()
			time.Sleep(r.cfg.RecordsDelay) // other replicas commit their batches within it
			if r.cfg.LogSize != nil {
				if n, err := r.cfg.LogSize(context.Background()); err == nil && n > 0 {
					upTo = max(upTo, n-1)
				}
			}
		}
		r.waitIndexed(upTo)
	}
	b := make([]byte, 8)
	rand.Read(b)
	in := Incident{ID: "inc-" + hex.EncodeToString(b), Principal: a.Principal, Detector: a.Detector, Action: a.Action, Score: a.Score,
		Summary: a.Evidence, OpenedAt: now}
	ctx := context.Background()
	if r.cfg.Incidents != nil {
		reqs, err := r.cfg.Incidents.SearchAudit(ctx, store.AuditQuery{Principal: a.Principal, Kind: string(audit.KindRequest), Since: now.Add(-time.Hour), Limit: 200})
		if err != nil {
			r.cfg.Log.Error("detect: evidence search", "err", err)
		}
		for _, e := range reqs {
			ev = append(ev, e.Index)
		}
	}
	in.Evidence = ev
	if r.cfg.Incidents != nil {
		if err := r.cfg.Incidents.CreateIncident(ctx, store.Incident{ID: in.ID, Principal: in.Principal, Detector: in.Detector, Action: string(in.Action),
			Score: in.Score, Summary: in.Summary, Evidence: in.Evidence, State: "open", OpenedAt: now}); err != nil {
			r.cfg.Log.Error("detect: incident not stored", "err", err)
		}
	}
	if r.cfg.Webhook != "" {
		if err := r.post(in); err != nil {
			r.cfg.Log.Error("detect: webhook failed", "incident", in.ID, "err", err)
		}
	}
}

// waitIndexed waits, up to EvidenceWait, until the search index holds log entry idx
// (and so every request logged before the alert).
func (r *Responder) waitIndexed(idx uint64) {
	deadline := time.Now().Add(r.cfg.EvidenceWait)
	for {
		n, err := r.cfg.Incidents.AuditIndexed(context.Background())
		if err == nil && n > idx {
			return
		}
		if time.Now().After(deadline) {
			r.cfg.Log.Warn("detect: search index behind the alert; incident evidence may miss the latest requests", "alert", idx, "indexed", n, "err", err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Sign is the webhook signature header value for body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// post sends the incident to the webhook. Its errors name the webhook by its origin only:
// the URL may be the credential (a token in its path), and the HTTP client's errors quote
// it (round 57).
func (r *Responder) post(in Incident) error {
	if redact.Origin(r.cfg.Webhook) == redact.Malformed {
		return errors.New("alerts.webhook is not a URL (not shown: it may hold a credential)")
	}
	body, _ := json.Marshal(in)
	var last error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 500 * time.Millisecond)
		}
		req, err := http.NewRequest(http.MethodPost, r.cfg.Webhook, bytes.NewReader(body))
		if err != nil {
			return redact.Error(err, redact.Origin, r.cfg.Webhook)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Strongroom-Signature", Sign(r.cfg.WebhookSecret, body))
		resp, err := r.cfg.HTTP.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		last = err
	}
	return redact.Error(last, redact.Origin, r.cfg.Webhook)
}

// Sanction is what the gateway enforces (gateway.Sanctions): the strongest action in force for a principal
// (or ""), imposed here or by another gateway, and since when.
func (r *Responder) Sanction(principal string) (obs.Action, time.Time) {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	best := sanction{}
	for _, m := range []map[string]sanction{r.sanctions, r.shared} {
		s, ok := m[principal]
		if !ok {
			continue
		}
		if now.After(s.until) {
			delete(m, principal)
			continue
		}
		if s.action.Severity() > best.action.Severity() {
			best = s
		}
	}
	return best.action, best.since
}
