// Package gateway is the OpenAI-compatible data plane in front of every inference
// endpoint: it authenticates, asks the policy, applies limits and hardening, proxies to
// the model server (streaming chunk by chunk), counts usage, and records every request.
package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/engineauth"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/rawsock"
	"github.com/strongroom/strongroom/internal/store"
	"go.opentelemetry.io/otel/trace"
)

// Interfaces the gateway consumes.
type (
	Authenticator interface {
		Authenticate(ctx context.Context, token string) (*authn.Principal, error)
	}
	// CertAuthenticator maps a TLS-verified client certificate to a principal (mTLS).
	CertAuthenticator interface {
		AuthenticateCert(ctx context.Context, cert *x509.Certificate) (*authn.Principal, error)
	}
	Decider interface {
		Decide(policy.Request) policy.Decision
	}
	// Geo maps a client address to an ISO country code, "" when unknown.
	Geo interface {
		Country(ip netip.Addr) string
	}
	Auditor interface {
		Submit(ctx context.Context, ev audit.Event) audit.Future
		Healthy() error
	}
	// RecordSink takes request records already in canonical bytes (audit.Batcher's
	// SubmitEncoded): the gateway writes them without building an audit.Event, in a
	// buffer it reuses once SubmitEncoded returns — a sink copies what it keeps of rec.Raw.
	RecordSink interface {
		SubmitEncoded(ctx context.Context, rec store.AuditEvent) audit.Future
		Healthy() error
	}
	// Detector sees every request's features (the request trace of DESIGN.md).
	Detector interface {
		Observe(o obs.Observation)
	}
	// Sanctions says which detector-imposed action is in force for a principal, and since
	// when: obs.None, Throttle, StripLogprobs, StepUp (fresh MFA after since) or Suspend.
	Sanctions interface {
		Sanction(principal string) (action obs.Action, since time.Time)
	}
)

// Route says where a model is served, nothing more: what may be done with it
// (classification, countries, hardening, watermarking) is its inventory record
// (package modelrec), looked up on every request in Config.Models.
type Route struct {
	// Model is the name clients ask for: "NAME:VERSION" serves that version, "NAME" the
	// newest enabled version of NAME in the inventory.
	Model     string   `json:"model"`
	Upstreams []string `json:"upstreams"` // base URLs ending in /v1
	// UpstreamKey is the engine's bearer and signs the watermark tenant (package
	// engineauth); required to serve a model whose record asks for watermarking.
	UpstreamKey string        `json:"upstream_key,omitempty"`
	Limits      limits.Limits `json:"limits,omitzero"`
	scope       string        // its limiter scope's name, "model:"+Model (made by New)
	keyBytes    []byte        // UpstreamKey, to keep it out of answers (made by New)
}

// Config wires a Gateway.
type Config struct {
	Routes []Route
	// Models holds every model version's record; a route whose model has none (or only a
	// disabled one) is not served.
	Models  modelrec.Resolver
	Auth    Authenticator
	Certs   CertAuthenticator // nil: client certificates are not used
	Policy  Decider
	Geo     Geo // nil: every country unknown
	Limiter limits.Limiter
	// FallbackLimiter, if set, takes over for public models while Limiter fails (Redis
	// down); restricted models are refused then.
	FallbackLimiter limits.Limiter
	KeyLimits       limits.Limits
	TenantLimits    limits.Limits
	Audit           Auditor
	// Records, if set, takes the per-request events (audit.Batcher: one log entry per
	// batch); else they go to Audit one entry each.
	Records RecordSink
	// Health, if set, must be nil for requests to be served (the store is still the data
	// directory's); checked with the audit log's health.
	Health          func() error
	Redactor        *audit.Redactor
	Detector        Detector  // nil: none
	Sanctions       Sanctions // nil: none
	TrustedProxies  []netip.Prefix
	MaxBody         int64         // default 4 MiB
	UpstreamTimeout time.Duration // time to the upstream's response headers; default 60s
	Logger          *slog.Logger
	Now             func() time.Time
	// Tracer, if set, traces requests and engine calls (OpenTelemetry; trace.go).
	Tracer trace.Tracer
	// RecordAnswers (with Records): an answer's last bytes — the body, or a stream's
	// "data: [DONE]" — go out only once its record is durable in the log (group commit:
	// the wait is the batch delay), so every completed answer is on the record; an answer
	// that cannot be recorded is not completed (503, or a stream without [DONE]). A stream's
	// content chunks go out as they come: a client that ignores [DONE] has them before
	// the record is durable.
	RecordAnswers bool
}

// Gateway is an http.Handler for /v1/.
type Gateway struct {
	cfg Config
	// answered is what engines' answers read whole (not streamed) hold now, in bytes,
	// across requests: at most maxAnswersHeld (answerBudget).
	answered atomic.Int64
	routes   map[string]*Route
	names    []string
	client   *http.Client
	engines  *engineClient
	log      *slog.Logger
	down     sync.Map // upstream URL -> time it was found down
	urlMu    sync.RWMutex
	urls     map[upstreamKey]*url.URL // upstreamURL's cache
	pool     sync.Pool
	refused  *refusals
	metrics  *metrics
	// noiseKey keys the deterministic logprob noise; random per process is enough, since
	// its purpose is only that repeats of one query see the same value.
	noiseKey []byte
	// ipDigests caches client addresses' keyed digests for their records (a client sends
	// many requests from one address); cleared when it holds maxIPDigests.
	ipMu      sync.Mutex
	ipDigests map[netip.Addr]string
	// inflight counts requests being served, waiting those of them blocked on a record's
	// future (awaitRecord).
	inflight, waiting atomic.Int64
}

// awaitRecord waits for a record to be durable. When every request in flight is waiting
// on a record, the records' group is committed now (audit.Batcher.CommitNow): nobody is
// left to join it, and its delay would only add latency (under a closed loop of clients,
// a rate lost to latency).
func (g *Gateway) awaitRecord(f audit.Future) error {
	if g.waiting.Add(1) >= g.inflight.Load() {
		g.commitNow()
	}
	_, err := f()
	g.waiting.Add(-1)
	return err
}

// leave ends a request's count in flight; if it was the last one not waiting on a record
// (denied, its client gone, a stream ended without [DONE]), the others' group is committed.
func (g *Gateway) leave() {
	if n := g.inflight.Add(-1); n > 0 && g.waiting.Load() >= n {
		g.commitNow()
	}
}

func (g *Gateway) commitNow() {
	if c, ok := g.cfg.Records.(interface{ CommitNow() }); ok {
		c.CommitNow()
	}
}

const maxIPDigests = 1 << 14

// ipDigest is the record's digest of a client address (audit.Redactor.Digest of its text).
func (g *Gateway) ipDigest(ip netip.Addr) string {
	g.ipMu.Lock()
	d, ok := g.ipDigests[ip]
	g.ipMu.Unlock()
	if ok {
		return d
	}
	d = g.cfg.Redactor.Digest(ip.String())
	g.ipMu.Lock()
	if g.ipDigests == nil || len(g.ipDigests) >= maxIPDigests {
		g.ipDigests = make(map[netip.Addr]string)
	}
	g.ipDigests[ip] = d
	g.ipMu.Unlock()
	return d
}

// New checks cfg and sets defaults in one place.
func New(cfg Config) (*Gateway, error) {
	if cfg.Auth == nil || cfg.Policy == nil || cfg.Limiter == nil || cfg.Audit == nil || cfg.Redactor == nil || cfg.Models == nil {
		return nil, errors.New("gateway: auth, policy, limiter, audit, redactor and model records are required")
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 4 << 20
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// The gateway owns its routes: a copy of each and of its engine list, so a caller that
	// reuses or changes its Config later changes nothing a request reads.
	cfg.Routes = slices.Clone(cfg.Routes)
	g := &Gateway{cfg: cfg, routes: map[string]*Route{}, log: cfg.Logger, refused: newRefusals(), metrics: newMetrics()}
	for i := range cfg.Routes {
		r := &cfg.Routes[i]
		r.Upstreams = slices.Clone(r.Upstreams)
		if r.Model == "" || len(r.Upstreams) == 0 {
			return nil, fmt.Errorf("gateway: route %d needs model and upstreams", i)
		}
		if _, dup := g.routes[r.Model]; dup {
			return nil, fmt.Errorf("gateway: model %s routed twice", r.Model)
		}
		for j, base := range r.Upstreams {
			if err := CheckUpstream(base); err != nil {
				return nil, fmt.Errorf("gateway: route %s, upstream %d: %w", r.Model, j+1, err)
			}
		}
		r.scope = "model:" + r.Model
		if r.UpstreamKey != "" {
			r.keyBytes = []byte(r.UpstreamKey)
		}
		g.routes[r.Model] = r
		g.names = append(g.names, r.Model)
	}
	g.client = &http.Client{Transport: engineTransport(cfg.UpstreamTimeout)}
	g.engines = newEngineClient(cfg.UpstreamTimeout, g.client)
	g.pool.New = func() any { return new(bytes.Buffer) }
	g.noiseKey = make([]byte, 32)
	rand.Read(g.noiseKey)
	return g, nil
}

// maxPooledBuffer bounds the buffers kept for reuse: one that grew past it for a large
// body or answer (a client's up to MaxBody, an engine's up to 64 MiB) is left to the GC
// rather than held — and handed to requests that need a few KiB.
const maxPooledBuffer = 256 << 10

// putBuffer returns b to the pool unless it grew past maxPooledBuffer.
func (g *Gateway) putBuffer(b *bytes.Buffer) {
	if b.Cap() <= maxPooledBuffer {
		g.pool.Put(b)
	}
}

// HealthCheck probes every upstream's /models every interval until ctx ends: an upstream
// that does not answer 200 is skipped (as after a failed connection) until it does.
func (g *Gateway) HealthCheck(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, rt := range g.routes {
			for _, base := range rt.Upstreams {
				g.probe(ctx, rt, base)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *Gateway) probe(ctx context.Context, rt *Route, base string) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u, err := g.upstreamURL(base, "models")
	if err != nil {
		return
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return
	}
	if rt.UpstreamKey != "" {
		req.Header.Set("Authorization", "Bearer "+rt.UpstreamKey)
	}
	resp, err := g.client.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		if _, was := g.down.Load(base); !was {
			g.log.Warn("upstream unhealthy", "model", rt.Model, "upstream", base)
		}
		g.down.Store(base, time.Now())
		return
	}
	g.down.Delete(base)
}

// ServeHTTP routes the OpenAI endpoints. An endpoint is matched only as written plainly:
// a path with escapes where none are needed ("/v1/chat%2Fcompletions", an escaped letter)
// is not found — a proxy in front that filters by the raw path would read it as another
// path than this router, which reads the decoded one. A model id in /v1/models/{id} may be
// escaped (SDKs escape ids).
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.RawPath != "" && !strings.HasPrefix(r.URL.RawPath, "/v1/models/") {
		errNotFound.write(w)
		return
	}
	switch r.URL.Path {
	case "/v1/models":
		if r.Method != http.MethodGet {
			errMethod.write(w)
			return
		}
		g.models(w, r)
	case "/v1/chat/completions":
		g.infer(w, r, "chat")
	case "/v1/completions":
		g.infer(w, r, "completions")
	case "/v1/embeddings":
		g.infer(w, r, "embeddings")
	default:
		if id, ok := modelPath(r.URL.Path); ok {
			g.retrieveModel(w, r, id)
			return
		}
		errNotFound.write(w)
	}
}

func (g *Gateway) authenticate(r *http.Request) (*authn.Principal, error) {
	// A client certificate verified by the TLS layer identifies the caller; without one,
	// the bearer token does.
	if g.cfg.Certs != nil && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && r.Header.Get("Authorization") == "" {
		return g.cfg.Certs.AuthenticateCert(r.Context(), r.TLS.VerifiedChains[0][0])
	}
	tok, err := authn.Bearer(r)
	if err != nil {
		return nil, err
	}
	return g.cfg.Auth.Authenticate(r.Context(), tok)
}

// authError is the answer to a failed authentication: 503 when the store could not say,
// else 401.
func authError(err error) *apiError {
	if errors.Is(err, authn.ErrStoreUnavailable) {
		return errStoreDown
	}
	return errUnauthenticated
}

// ipText is ip.String(), without making it when r's peer address spells it: an IPv4 peer
// (not behind a trusted proxy) is the host part of RemoteAddr, and an IPv4 address that
// netip parses has one spelling (no leading zeros).
func ipText(r *http.Request, ip netip.Addr) string {
	if ip.Is4() {
		if i := strings.LastIndexByte(r.RemoteAddr, ':'); i > 0 && i <= len("255.255.255.255") {
			if a, err := netip.ParseAddr(r.RemoteAddr[:i]); err == nil && a == ip {
				return r.RemoteAddr[:i]
			}
		}
	}
	return ip.String()
}

// clientIP is the peer address or, behind trusted proxies, the rightmost address in
// X-Forwarded-For (all header lines taken as one list, in order) that is not itself a
// trusted proxy. An entry that is not an address makes the client unknown (the zero
// Addr), never an earlier, attacker-written entry.
func (g *Gateway) clientIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	ip := ap.Addr().Unmap()
	if !g.trusted(ip) {
		return ip
	}
	lines := r.Header.Values("X-Forwarded-For")
	for i := len(lines) - 1; i >= 0; i-- {
		hops := strings.Split(lines[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			h := strings.TrimSpace(hops[j])
			if h == "" {
				continue
			}
			fwd, err := netip.ParseAddr(h)
			if err != nil {
				return netip.Addr{}
			}
			if ip = fwd.Unmap(); !g.trusted(ip) {
				return ip
			}
		}
	}
	return ip // every hop a trusted proxy: the leftmost one
}

func (g *Gateway) trusted(ip netip.Addr) bool {
	for _, p := range g.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (g *Gateway) country(ip netip.Addr) string {
	if g.cfg.Geo == nil || !ip.IsValid() {
		return ""
	}
	return g.cfg.Geo.Country(ip)
}

func policyPrincipal(p *authn.Principal) policy.Principal {
	return policy.Principal{ID: p.ID, Tenant: p.Tenant, Org: p.Org, Country: p.Country, Screening: string(p.Screening), Roles: p.Roles}
}

// PolicyModel is the model as Cedar sees it: its inventory name and record.
func PolicyModel(rec modelrec.Record) policy.Model {
	return policy.Model{Name: rec.Name, Classification: rec.Attrs.Classification, AllowedCountries: rec.Attrs.AllowedCountries, DeniedCountries: rec.Attrs.DeniedCountries}
}

// record is the inventory record rt serves now; false when there is none or it is disabled.
func (g *Gateway) record(rt *Route) (modelrec.Record, bool) {
	rec, ok := g.cfg.Models.Resolve(rt.Model)
	return rec, ok && !rec.Disabled
}

func (g *Gateway) models(w http.ResponseWriter, r *http.Request) {
	p, err := g.authenticate(r)
	if err != nil {
		g.log.Info("unauthenticated", "err", err)
		authError(err).write(w)
		return
	}
	ip := g.clientIP(r)
	ctx := policy.Context{Endpoint: "models", ClientCountry: g.country(ip), IP: ip.String(), HourUTC: g.cfg.Now().UTC().Hour(), MFAAgeS: -1}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	out := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, name := range g.names {
		if !p.MayUse(name) {
			continue
		}
		rec, ok := g.record(g.routes[name])
		if !ok {
			continue
		}
		if d := g.cfg.Policy.Decide(policy.Request{Principal: policyPrincipal(p), Action: policy.ActionList, Model: PolicyModel(rec), Context: ctx}); d.Allow {
			out.Data = append(out.Data, model{ID: name, Object: "model", OwnedBy: "strongroom"})
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// reqState carries one inference request through the pipeline.
type reqState struct {
	start        time.Time
	watermark    bool // the engine is asked to watermark this answer
	watermarked  bool // and said it did
	endpoint     string
	p            *authn.Principal
	ip           netip.Addr
	ipText       string // ip.String() (ipText)
	country      string
	route        *Route
	rec          modelrec.Record // the route's inventory record when the request came
	feat         features        // after hardening: what the engine is sent
	asked        askedFor        // what the client asked for: what policy and the detectors judge
	prompt       []byte
	decision     string
	reason       string
	status       int
	code         string          // the error code answered, if refused (a bounded metric label)
	recorded     bool            // the request's event is in the log already (recordAnswer)
	traceCtx     context.Context // the request's trace context (its span's, when tracing)
	upstreamWait time.Duration   // forwarding to the engine's response headers
	usage        Usage
	outHash      hash.Hash
	streamStart  audit.Future   // the stream's start record, submitted when the request was forwarded
	shaper       *logprobShaper // nil unless logprobs are requested and the route shapes them
	// cut: the answer's stream was cut short (the engine's body broke, a line the gateway
	// would not relay, its record failed): infer aborts the response, so that no client
	// reads the part sent as a whole answer.
	cut bool
}

func (g *Gateway) infer(w http.ResponseWriter, r *http.Request, endpoint string) {
	st := &reqState{start: g.cfg.Now(), endpoint: endpoint, decision: audit.Deny, ip: g.clientIP(r)}
	st.ipText = ipText(r, st.ip)
	defer g.finish(r.Context(), st)
	g.inflight.Add(1)
	defer g.leave()
	ctx, span := g.startSpan(r, endpoint)
	st.traceCtx = ctx
	defer endSpan(span, st)
	if r.Method != http.MethodPost {
		st.fail(w, errMethod, "method "+r.Method)
		return
	}
	p, err := g.authenticate(r)
	if err != nil {
		st.fail(w, authError(err), err.Error())
		return
	}
	st.p = p
	sanction, since := obs.None, time.Time{}
	if g.cfg.Sanctions != nil {
		sanction, since = g.cfg.Sanctions.Sanction(p.ID)
	}
	switch {
	case sanction == obs.Suspend:
		st.fail(w, errForbidden, "principal suspended by the extraction detector")
		return
	case sanction == obs.StepUp && !p.MFAAt.After(since):
		// RFC 9470: the caller must authenticate again, with MFA, after the alert.
		w.Header().Set("WWW-Authenticate", `Bearer error="insufficient_user_authentication", error_description="fresh multi-factor authentication required", max_age=0`)
		st.fail(w, errStepUp, "step-up required by the extraction detector")
		return
	}
	buf := g.pool.Get().(*bytes.Buffer)
	buf.Reset()
	defer g.putBuffer(buf)
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, g.cfg.MaxBody)); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			st.fail(w, errTooLarge, "body over limit")
			return
		}
		st.fail(w, badRequest("Could not read the request body."), err.Error())
		return
	}
	body := buf.Bytes()
	feat, err := parseRequest(body, endpoint)
	if err != nil {
		st.fail(w, badRequest("Invalid request body: "+err.Error()+"."), recordReason(err))
		return
	}
	st.feat = *feat
	if st.feat.Model == "" {
		st.fail(w, errNoModel, "no model")
		return
	}
	rt, ok := g.routes[st.feat.Model]
	if !ok {
		// The name is the caller's text: it goes nowhere (the record, the log line, the
		// detectors), only a route's own name does.
		st.fail(w, errModelNotFound, "model not routed")
		return
	}
	if !p.MayUse(rt.Model) {
		st.fail(w, errModelNotFound, "model "+rt.Model+" not allowed for this key")
		return
	}
	st.route = rt
	rec, ok := g.record(rt)
	if !ok {
		st.fail(w, errModelUnavailable, "model "+rt.Model+" has no enabled inventory record")
		return
	}
	st.rec = rec
	if p.Unverified && rec.Attrs.Classification != "public" {
		// The store is unreachable: a revocation or sanction made elsewhere may be unseen.
		// Public models are served for authn.StoreGrace; nothing else is.
		st.fail(w, errStoreDown, "store unreachable: "+rec.Attrs.Classification+" model refused to an unverified key")
		return
	}
	st.country = g.country(st.ip)
	st.asked = asked(&st.feat)
	logprobs, top, n := st.asked.Logprobs, st.asked.TopLogprobs, st.asked.N
	mfaAge := int64(-1)
	if !p.MFAAt.IsZero() {
		mfaAge = int64(st.start.Sub(p.MFAAt).Seconds())
	}
	pctx := policy.Context{Endpoint: endpoint, ClientCountry: st.country, IP: st.ipText, HourUTC: st.start.UTC().Hour(),
		MFAAgeS: mfaAge, Stream: st.feat.Stream, Logprobs: logprobs, TopLogprobs: top, LogitBias: len(st.asked.LogitBias) > 0,
		N: n, MaxTokens: st.asked.MaxTokens, TemperatureMilli: st.asked.TemperatureMilli}
	pm := PolicyModel(rec)
	d := g.cfg.Policy.Decide(policy.Request{Principal: policyPrincipal(p), Action: policy.ActionInfer, Model: pm, Context: pctx})
	if !d.Allow {
		st.fail(w, errForbidden, d.Reason())
		return
	}
	// Policy decides per model and tenant whether the outputs carry the tenant's watermark
	// (on routes whose engine can watermark).
	if rec.Attrs.Watermark {
		if rt.UpstreamKey == "" {
			// Without the engine key the tenant cannot be signed: the engine would not mark.
			g.log.Error("ALERT model record asks for watermarking but its route has no upstream_key", "model", rt.Model)
			st.fail(w, errModelUnavailable, "watermarking model "+rt.Model+" routed without upstream_key")
			return
		}
		st.watermark = g.cfg.Policy.Decide(policy.Request{Principal: policyPrincipal(p), Action: policy.ActionWatermark, Model: pm, Context: pctx}).Allow
	}
	if err := g.cfg.Audit.Healthy(); err != nil {
		st.fail(w, errAuditDown, "audit log unhealthy: "+err.Error())
		return
	}
	if g.cfg.Health != nil {
		if err := g.cfg.Health(); err != nil {
			st.fail(w, errUnavailable, err.Error())
			return
		}
	}
	hard := rec.Attrs.EffectiveHardening()
	if sanction == obs.StripLogprobs { // detector response: no more logit information
		hard.MaxTopLogprobs, hard.LogitBias = -1, "reject"
	}
	before := sent(&st.feat)
	upBody, err := applyHardening(hard, body, &st.feat, endpoint)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) {
			st.fail(w, ae, "hardening: "+ae.message)
		} else {
			st.fail(w, badRequest("Invalid request."), err.Error())
		}
		return
	}
	setHardened(w, before, &st.feat)
	st.prompt = bytes.Clone(st.feat.prompt()) // body goes back to the pool; the detectors keep this
	est := estimateTokens(len(st.prompt)) + st.feat.maxTokens()*st.feat.generations()
	if est == 0 {
		est = estimateTokens(len(body))
	}
	scopes := []limits.Scope{
		{Name: "key:" + p.KeyID, Limits: g.cfg.KeyLimits},
		{Name: "tenant:" + p.Tenant, Limits: g.cfg.TenantLimits},
		{Name: rt.scope, Limits: rt.Limits},
	}
	if sanction == obs.Throttle {
		scopes = append(scopes, limits.Scope{Name: "sanction:" + p.ID, Limits: limits.Limits{RPM: 6, Concurrent: 1}})
	}
	done, denied, err := g.cfg.Limiter.Admit(r.Context(), scopes, est)
	if err != nil && g.cfg.FallbackLimiter != nil && rec.Attrs.Classification == "public" {
		g.log.Error("ALERT shared limiter unavailable; local limits for public model", "model", rt.Model, "err", err)
		done, denied, err = g.cfg.FallbackLimiter.Admit(r.Context(), scopes, est)
	}
	if err != nil {
		st.fail(w, errLimitsDown, "limiter unavailable: "+err.Error())
		return
	}
	if denied != nil {
		st.fail(w, rateLimited(denied.RetryAfter), fmt.Sprintf("limit %s on %s", denied.What, denied.Scope))
		return
	}
	if lp, _ := st.feat.logprobs(); lp && (hard.RoundLogprobs > 0 || hard.LogprobNoise > 0) {
		st.shaper = &logprobShaper{decimals: hard.RoundLogprobs, sigma: hard.LogprobNoise, key: g.noiseKey,
			ctx: []byte(p.ID + "\x00" + g.cfg.Redactor.Digest(string(st.prompt)))}
	}
	st.decision, st.reason = audit.Allow, d.Reason()
	st.outHash = g.cfg.Redactor.NewHash()
	g.proxy(w, r, st, upBody)
	done(st.charged(est))
	if st.cut {
		// Ended without the chunked body's end (HTTP/1.1) or with a stream reset (HTTP/2):
		// a client that takes a stream without [DONE] as complete (openai-go does) sees an
		// error. The deferred record and counts run as the panic unwinds; both servers take
		// this panic as "abort" and log nothing.
		panic(http.ErrAbortHandler)
	}
}

// charged is what an admitted request's limits are charged once it ended: its usage as the
// engine told it (or as estimated from the answer's bytes); else — the client gone before
// the answer or mid-stream, a stream cut before its usage — the admission's estimate: the
// engine had the request and may have answered it whole (charged nothing, hanging up was a
// way around tpm and daily budgets: outside round 56). Nothing for an engine's refusal or
// failure (an error status, no answer).
func (st *reqState) charged(est int) int {
	switch {
	case st.usage != (Usage{}):
		return st.usage.PromptTokens + st.usage.CompletionTokens
	case st.status == 499, st.status >= 200 && st.status < 300, st.cut:
		return est
	}
	return 0
}

func (st *reqState) fail(w http.ResponseWriter, e *apiError, reason string) {
	st.status, st.reason, st.code = e.status, reason, e.code
	if st.decision == audit.Allow && e.status >= 500 {
		st.reason = "upstream: " + reason
	}
	e.write(w)
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request, st *reqState, body []byte) {
	var resp *http.Response
	var err error
	if st.feat.Stream && g.cfg.RecordAnswers && g.cfg.Records != nil {
		// The stream's start record goes to the log now and is awaited before the first
		// byte (stream): its commit overlaps the engine's time to first token.
		st.streamStart = g.submitRecord(r.Context(), st, audit.KindStreamStart)
	}
	// Upstreams found down in the last 5 s are skipped while another one is not: when all
	// are, each is tried anyway (an engine that just started must not wait for the probe).
	recent := func(base string) bool {
		t, ok := g.down.Load(base)
		return ok && time.Since(t.(time.Time)) < 5*time.Second
	}
	allDown := !slices.ContainsFunc(st.route.Upstreams, func(b string) bool { return !recent(b) })
	for _, base := range st.route.Upstreams {
		if !allDown && recent(base) {
			continue
		}
		u, rerr := g.upstreamURL(base, st.endpoint)
		if rerr != nil {
			err = rerr
			continue
		}
		// The request is only written out (DoFor): no body reader, no context of its own,
		// and the constant headers' values shared (only read; the tracer's Set replaces).
		req := &http.Request{Method: http.MethodPost, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Host: u.Host, ContentLength: int64(len(body))}
		if st.route.UpstreamKey == "" && !st.watermark && g.cfg.Tracer == nil {
			// Nothing of the request's own among the headers: a map shared by all, only
			// ever read (DoFor writes it out), not one made a request.
			req.Header = engineHeaderJSON
			if st.feat.Stream {
				req.Header = engineHeaderStream
			}
		} else {
			req.Header = make(http.Header, 4)
			req.Header["Content-Type"] = headerJSON
			if st.feat.Stream {
				req.Header["Accept"] = headerEventStream
			}
		}
		if st.route.UpstreamKey != "" {
			req.Header.Set("Authorization", "Bearer "+st.route.UpstreamKey)
		}
		if st.watermark {
			req.Header.Set(engineauth.TenantHeader, st.p.Tenant)
			req.Header.Set(engineauth.TenantSigHeader, engineauth.SignTenant([]byte(st.route.UpstreamKey), st.p.Tenant, body))
		}
		span := g.upstreamSpan(st.traceCtx, req, base)
		t0 := time.Now()
		resp, err = g.engines.DoFor(r.Context(), st.p.Tenant, req, body)
		st.upstreamWait = time.Since(t0)
		span.End()
		if err == nil {
			g.down.Delete(base)
			break
		}
		if !isDialError(err) {
			break // only connection failures are retried: the request may have run
		}
		g.down.Store(base, time.Now())
	}
	if err != nil || resp == nil {
		var ne net.Error
		switch {
		case r.Context().Err() != nil:
			st.status, st.reason = 499, "client went away"
		case errors.As(err, &ne) && ne.Timeout():
			st.fail(w, errUpstreamSlow, fmt.Sprint(err))
		default:
			st.fail(w, errUpstreamDown, fmt.Sprint(err))
		}
		return
	}
	defer resp.Body.Close()
	st.status = resp.StatusCode
	st.watermarked = st.watermark && resp.Header.Get(engineauth.WatermarkHeader) == "applied"
	h := w.Header()
	for _, k := range relayedHeaders {
		// readAnswer's keys are canonical and its values slices of their own: the first
		// value is relayed as it is (Header.Get, then Set, made a slice a header).
		if vs := resp.Header[k]; len(vs) > 0 && vs[0] != "" {
			h[k] = vs[:1:1]
		}
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		g.stream(r.Context(), w, resp.Body, st)
		return
	}
	out := g.pool.Get().(*bytes.Buffer)
	out.Reset()
	defer g.putBuffer(out)
	ab := &answerBudget{r: io.LimitedReader{R: resp.Body, N: maxAnswer + 1}, held: &g.answered}
	defer ab.release() // once the answer went out: its buffer is held until then
	_, err = out.ReadFrom(ab)
	if errors.Is(err, errAnswersHeld) {
		g.log.Error("ALERT engine answers read whole hold the gateway's bound; an answer refused", "bound_bytes", maxAnswersHeld, "model", st.route.Model)
		st.fail(w, errUnavailable, err.Error())
		return
	}
	if err != nil {
		st.fail(w, errUpstreamDown, "reading upstream: "+err.Error())
		return
	}
	if int64(out.Len()) > maxAnswer {
		// Cut at the bound, it would be relayed (and recorded) as a whole answer.
		st.fail(w, errUpstreamDown, "engine answer over 64 MiB")
		return
	}
	respBody := out.Bytes()
	respBody, _ = g.hideKey(respBody, st)
	if st.shaper != nil {
		var ok bool
		if respBody, ok = st.shaper.rewrite(respBody); !ok {
			// Hardening fails closed: an answer whose logprobs cannot be shaped is not
			// relayed raw.
			st.fail(w, errUpstreamDown, "engine answer the gateway could not parse to shape its logprobs")
			return
		}
	}
	st.outHash.Write(respBody)
	if u, ok := parseUsage(out.Bytes()); ok {
		st.usage = u
	} else {
		st.usage = Usage{PromptTokens: estimateTokens(len(st.prompt)), CompletionTokens: estimateTokens(out.Len()), Estimated: true}
	}
	if err := g.recordAnswer(r.Context(), st); err != nil {
		st.recorded = false // the refusal is recorded (or fails) in finish
		st.decision = audit.Deny
		st.fail(w, errAuditDown, "answer not recorded: "+err.Error())
		return
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(respBody)
}

// hideKey is b with the route's upstream key replaced (a copy, and true) if b holds it. An
// engine, or a proxy before it, that echoes the request — an error page, a debug answer —
// would hand the engine's key to the tenant (outside round 57's note).
func (g *Gateway) hideKey(b []byte, st *reqState) ([]byte, bool) {
	k := st.route.keyBytes
	if k == nil || !bytes.Contains(b, k) {
		return b, false
	}
	g.log.Error("ALERT an engine answer held the route's upstream key; hidden from the caller (rotate it if the engine logs requests)", "model", st.route.Model)
	return bytes.ReplaceAll(b, k, []byte("***")), true
}

var (
	headerJSON        = []string{"application/json"}
	headerEventStream = []string{"text/event-stream"}
	// An engine request's headers when it has none of its own (no upstream key, watermark
	// or trace), for an answer and for a stream: shared, never written to.
	engineHeaderJSON   = http.Header{"Content-Type": headerJSON}
	engineHeaderStream = http.Header{"Content-Type": headerJSON, "Accept": headerEventStream}
	relayedHeaders     = []string{"Content-Type", "Cache-Control", "X-Request-Id"}
)

// CheckUpstream refuses an engine base URL the gateway cannot send requests to as
// written: not http or https, no host, credentials in it (they would be logged and sent
// by the health probe only: the route's upstream_key is where a key goes), a fragment
// (no part of a request), or a path that parsers read differently (plainPath: dot or
// empty segments, encoded separators). A query is kept on every request (an api-version,
// say). The error never repeats the URL: it may hold a password.
func CheckUpstream(base string) error {
	_, err := parseUpstream(base)
	return err
}

// parseUpstream is base parsed, or CheckUpstream's refusal.
func parseUpstream(base string) (*url.URL, error) {
	u, err := url.Parse(base)
	switch {
	case err != nil:
		return nil, errors.New("the engine URL does not parse")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("the engine URL is not http or https")
	case u.Host == "" || u.Opaque != "":
		return nil, errors.New("the engine URL has no host")
	case u.User != nil:
		return nil, errors.New("the engine URL holds credentials: give the route an upstream key instead")
	case u.Fragment != "" || strings.Contains(base, "#"):
		return nil, errors.New("the engine URL has a fragment")
	case !plainPath(u.EscapedPath()):
		return nil, errors.New("the engine URL's path has an empty or dot segment, an encoded dot, slash or backslash, a backslash or a semicolon: write it as the engine should receive it")
	}
	return u, nil
}

// plainPath: every segment of the escaped path p (trailing slashes aside) is one that
// every parser reads alike — not empty, not "." or "..", no percent-encoded '.', '/' or
// '\', no '\' or ';'. An engine (or a proxy before it) that decodes before it resolves
// would take "/v1/%2e%2e/admin" or "/v1/..;/admin" outside the base (outside round 35), and
// one that does not would not: such a base is refused rather than sent as written or
// quietly rewritten.
func plainPath(p string) bool {
	p = strings.TrimRight(p, "/")
	if p == "" {
		return true
	}
	rest, ok := strings.CutPrefix(p, "/")
	if !ok {
		return false
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, `;\`) {
			return false
		}
		low := strings.ToLower(seg)
		if strings.Contains(low, "%2e") || strings.Contains(low, "%2f") || strings.Contains(low, "%5c") {
			return false
		}
	}
	return true
}

// upstreamURL is the engine URL of endpoint at base — the base's path and the endpoint's
// joined, the base's query kept — parsed once: the result is shared by every request to
// it and must only be read. The cache is dropped whole when it reaches maxUpstreamURLs
// (routes are changed by an operator, not per request).
func (g *Gateway) upstreamURL(base, endpoint string) (*url.URL, error) {
	k := upstreamKey{base, endpoint}
	g.urlMu.RLock()
	u := g.urls[k]
	g.urlMu.RUnlock()
	if u != nil {
		return u, nil
	}
	bu, err := parseUpstream(base)
	if err != nil {
		return nil, err
	}
	if bu.Path == "" {
		bu.Path = "/" // JoinPath keeps an empty path relative: "chat/completions" is no request target
	}
	u = bu.JoinPath(upstreamPath(endpoint))
	g.urlMu.Lock()
	if g.urls == nil || len(g.urls) >= maxUpstreamURLs {
		g.urls = map[upstreamKey]*url.URL{}
	}
	g.urls[k] = u
	g.urlMu.Unlock()
	return u, nil
}

type upstreamKey struct{ base, endpoint string }

const maxUpstreamURLs = 1024

func upstreamPath(endpoint string) string {
	if endpoint == "chat" {
		return "chat/completions"
	}
	return endpoint
}

var (
	utf8BOM      = []byte("\xef\xbb\xbf")
	doneValue    = []byte("[DONE]")
	emptyChoices = []byte(`"choices":[]`)
)

// ssePayload is a data line's value as an event-stream parser reads it ("data:", one
// optional space), with its line end; ok is false for any other line.
func ssePayload(line []byte) (payload []byte, ok bool) {
	v, ok := bytes.CutPrefix(line, []byte("data:"))
	if len(v) > 0 && v[0] == ' ' {
		v = v[1:]
	}
	return v, ok
}

// blankLine reports whether line is an empty line (the end of an event).
func blankLine(line []byte) bool { return len(line) == 1 || len(line) == 2 && line[0] == '\r' }

// maxAnswer bounds an engine's answer that is not streamed (read whole before it is
// relayed). A variable for tests.
var maxAnswer int64 = 64 << 20

// maxAnswersHeld bounds what the engines' answers read whole hold at once, across
// requests: each may be up to maxAnswer, and engines that all answered that much to many
// requests at once would take the gateway's memory (outside round 43's note). A variable
// for tests.
var maxAnswersHeld int64 = 1 << 30

var errAnswersHeld = errors.New("engine answers in memory over the gateway's bound")

// answerBudget reads an answer while counting its bytes in held, the gateway's total;
// past maxAnswersHeld the read fails (errAnswersHeld). release gives the bytes back.
type answerBudget struct {
	r    io.LimitedReader // held in place: io.LimitReader's would be an allocation a request
	held *atomic.Int64
	n    int64
}

func (a *answerBudget) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.n += int64(n)
		if a.held.Add(int64(n)) > maxAnswersHeld {
			return n, errAnswersHeld
		}
	}
	return n, err
}

func (a *answerBudget) release() { a.held.Add(-a.n) }

// maxStreamLine bounds one line of an engine's stream (gathered whole when longer than the
// stream reader's buffer).
const maxStreamLine = 1 << 20

// maxHeldAfterDone bounds what is held from [DONE] on until the answer's record is durable.
const maxHeldAfterDone = 64 << 10

// lfReader turns the bare CR line ends the event-stream grammar allows into LF, so that the
// stream loop, which splits lines at LF, sees every line (a [DONE] hidden in a CR-ended
// line would otherwise pass unrecognized). CRLF is left as it is. A CR at the end of a read
// is held back until the next byte says which it is — unless it ends a blank line (the
// line before it ended): that is an event's end, whatever follows, so it goes out at once as
// LF and an LF right after it is dropped. Held back, it kept the whole event from the
// client until the engine sent more (outside round 43); the price is that a CRLF blank
// line cut between its CR and LF reaches the client as LF.
type lfReader struct {
	r       io.Reader
	held    bool // a CR was held back
	skipLF  bool // a blank line's CR ended the last read and went out as LF: an LF next is its
	lastEnd bool // the last byte handed out ended a line
}

func (l *lfReader) Read(p []byte) (int, error) {
	if len(p) < 2 {
		return 0, io.ErrShortBuffer // read through a bufio.Reader: a held CR needs a byte of room
	}
	off := 0
	if l.held {
		off = 1
	}
	n, err := l.r.Read(p[off:])
	switch {
	case l.held:
		if n == 0 {
			if err != nil { // the stream ended after the CR: it ended a line
				l.held, l.lastEnd = false, true
				p[0] = '\n'
				return 1, err
			}
			return 0, nil
		}
		p[0] = '\n'
		if p[1] == '\n' {
			p[0] = '\r'
		}
		l.held = false
		n++
	case l.skipLF && n > 0:
		l.skipLF = false
		if p[0] == '\n' {
			n = copy(p, p[1:n])
		}
	}
	for i := 0; i < n; {
		j := bytes.IndexByte(p[i:n], '\r')
		if j < 0 {
			break
		}
		i += j
		switch {
		case i+1 < n:
			if p[i+1] != '\n' {
				p[i] = '\n'
			}
		case err != nil:
			p[i] = '\n'
		case i > 0 && p[i-1] == '\n' || i == 0 && l.lastEnd:
			p[i], l.skipLF = '\n', true // a blank line: an event's end
		default:
			l.held = true
			n--
		}
		i++
	}
	if n > 0 {
		l.lastEnd = p[n-1] == '\n'
	}
	return n, err
}

// stream passes server-sent events through one by one, flushing each, and reads the usage
// block; a usage-only event the client did not ask for (we asked upstream for it) is not
// forwarded. Lines are HMAC'd, checked for [DONE] and shaped whole (a line over the
// reader's buffer is gathered, up to maxStreamLine).
func (g *Gateway) stream(ctx context.Context, w http.ResponseWriter, body io.Reader, st *reqState) {
	fl, _ := w.(http.Flusher)
	var done []byte // the held "data: [DONE]" event, sent once the record is durable
	if g.cfg.RecordAnswers && g.cfg.Records != nil {
		// Content goes out as it comes, and a client may not wait for [DONE]: so the stream's
		// start is on the record before its first byte (who, which model, from where, the
		// prompt's HMAC); its usage and output HMAC follow in the request's record at the end.
		start := st.streamStart
		if start == nil { // an engine that streams without being asked to
			start = g.submitRecord(ctx, st, audit.KindStreamStart)
		}
		if err := g.awaitRecord(start); err != nil {
			st.decision = audit.Deny
			st.fail(w, errAuditDown, "stream not recorded: "+err.Error())
			return
		}
	}
	w.WriteHeader(st.status)
	clientWantsUsage := st.feat.IncludeUsage
	lf := &lfReader{r: body}
	br := streamReaders.Get().(*bufio.Reader)
	br.Reset(lf)
	defer func() {
		br.Reset(nil) // holds neither the engine's body nor its bytes' reader
		streamReaders.Put(br)
	}()
	var outBytes int
	var long []byte    // a line longer than br's buffer, gathered whole (at most maxStreamLine)
	skipBlank := false // a usage event the client did not ask for was dropped: its blank line too
	first := true
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the reader's buffer is gathered whole and then HMAC'd,
			// checked and shaped as one line: relayed in pieces, a logprobs chunk's pieces
			// could not be parsed and went out unshaped, and the pieces after the first
			// were left out of the output HMAC.
			if len(long)+len(line) > maxStreamLine {
				st.reason, st.cut = "engine sent a line over 1 MiB; the stream ends here", true
				break
			}
			long = append(long, line...)
			continue
		}
		joined := long != nil
		if joined {
			line, long = append(long, line...), nil
		}
		if first {
			// An event-stream parser skips one byte-order mark at the stream's start: so
			// does this loop, or a first event behind one would pass unread.
			line, first = bytes.TrimPrefix(line, utf8BOM), false
		}
		if hidden, ok := g.hideKey(line, st); ok {
			line, joined = hidden, true // a copy: the blank line after it is not reached over
		}
		if len(line) > 0 {
			forward := true
			if skipBlank {
				skipBlank = false
				forward = !blankLine(line) // only a blank line: anything else is the next event's
			}
			payload, isData := ssePayload(line)
			// The OpenAI stream's last event, "data: [DONE]", in any spelling the
			// event-stream grammar or a lenient client accepts: the space after the colon
			// is optional, and a value that merely starts with [DONE] counts (fail closed:
			// such a line is held until the answer is recorded).
			lastEvent := isData && bytes.HasPrefix(payload, doneValue)
			if isData {
				if u, ok := parseUsage(payload); ok {
					st.usage = u
					if !clientWantsUsage && bytes.Contains(payload, emptyChoices) {
						forward = false
						skipBlank = true
					}
				}
			}
			held := false
			if forward && g.cfg.RecordAnswers && g.cfg.Records != nil && (done != nil || lastEvent) {
				if len(done)+len(line) > maxHeldAfterDone {
					// An engine that goes on after [DONE] is not held in memory without bound:
					// the rest is dropped and the stream ends here.
					st.reason = "engine sent more than 64 KiB after [DONE]; the rest dropped"
					break
				}
				done = append(done, line...) // [DONE], and whatever follows it, waits for the record
				forward, held = false, true
			}
			shaped := false
			if forward && isData && st.shaper != nil && !lastEvent {
				// Every data line is parsed, shaped and re-encoded (a filter on the bytes
				// missed escaped key spellings); one that cannot be parsed ends the stream
				// — hardening fails closed, never relays raw values.
				out, ok := st.shaper.rewrite(bytes.TrimRight(payload, "\r\n"))
				if !ok {
					st.reason, st.cut = "a logprobs event the gateway could not shape; the stream ends here", true
					break
				}
				line = append(append([]byte("data: "), out...), '\n')
				payload, shaped = line[len("data: "):], true
			}
			if isData && (forward || held) {
				// The output HMAC is of what the client is given: shaped values, not the
				// engine's; neither a usage event the client did not ask for nor a line
				// dropped at the bound after [DONE] (outside round 43: both were in it).
				st.outHash.Write(payload)
				outBytes += len(payload)
			}
			if forward {
				end := blankLine(line) // the blank line that ends an event (LF or CRLF)
				if !end && !shaped && !joined && err == nil && br.Buffered() > 0 {
					// The blank line that ends this event is here already: it goes out in the
					// same Write. It is right after line in the reader's buffer (no fill
					// happens while its bytes are buffered: only those buffered are peeked),
					// so line reaches over it.
					nb, _ := br.Peek(min(2, br.Buffered()))
					if k := blankPrefix(nb); k > 0 {
						line = line[:len(line)+k]
						br.Discard(k)
						end = true
					}
				}
				if _, werr := w.Write(line); werr != nil {
					st.reason = "client went away mid-stream"
					return
				}
				// End of an event: flush unless a whole next event is already here (it
				// goes out in the same write; nothing waits on the upstream, not even
				// behind half an event).
				if end && fl != nil && !eventBuffered(br) {
					fl.Flush()
				}
			}
		}
		if err != nil {
			if err != io.EOF && ctx.Err() == nil {
				// The engine's body broke (cut mid-chunk, framing it could not keep, less
				// than its Content-Length): what was relayed is not the whole answer.
				st.reason, st.cut = "engine's stream broke off: "+err.Error(), true
			}
			break
		}
	}
	if ctx.Err() != nil {
		st.reason = "client went away mid-stream" // the record must not read as a whole answer
	}
	if fl != nil {
		fl.Flush()
	}
	if st.usage == (Usage{}) {
		st.usage = Usage{PromptTokens: estimateTokens(len(st.prompt)), CompletionTokens: estimateTokens(outBytes), Estimated: true}
	}
	if done == nil {
		return
	}
	if err := g.recordAnswer(ctx, st); err != nil {
		// The stream stays without its end: the client must not take it as complete.
		st.recorded, st.cut = false, true
		st.reason = "answer not recorded: " + err.Error()
		g.log.Error("ALERT answer not recorded; stream left without [DONE]", "err", err)
		return
	}
	w.Write(done)
	if fl != nil {
		fl.Flush()
	}
}

// streamReaders are the stream loop's 32 KiB line readers: one allocated (and cleared)
// per stream was over a quarter of the stream path's allocation CPU, and the collector's
// work came with it. Nothing read through one is kept after the stream ends (lines are
// copied out: the held [DONE], the output HMAC, the shaper's rewrite).
var streamReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}

// eventBuffered reports whether br already holds a whole event (up to its blank line).
func eventBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, eventEnd) || bytes.Contains(b, eventEndCRLF)
}

var eventEnd, eventEndCRLF = []byte("\n\n"), []byte("\n\r\n")

// blankPrefix is the length of the blank line b starts with (LF or CRLF; 0: none).
func blankPrefix(b []byte) int {
	switch {
	case len(b) > 0 && b[0] == '\n':
		return 1
	case len(b) > 1 && b[0] == '\r' && b[1] == '\n':
		return 2
	}
	return 0
}

// finish records the request: one audit event (submitted, not awaited; a failure marks the
// log unhealthy and later requests are refused) and one observation for the detectors.
func (g *Gateway) finish(ctx context.Context, st *reqState) {
	g.metrics.observe(st, g.cfg.Now())
	if st.p == nil && st.decision == audit.Deny {
		g.refused.add(st.ip, g.country(st.ip), st.status, st.start)
		return
	}
	if !st.recorded {
		if st.decision == audit.Deny {
			var principal, model string
			if st.p != nil {
				principal = st.p.ID
			}
			if st.route != nil {
				model = st.route.Model
			}
			g.log.Info("request denied", "principal", principal, "model", model, "status", st.status, "reason", st.reason)
		}
		if g.cfg.Records != nil {
			// The batcher marks the log unhealthy itself when a batch fails: nothing to wait on.
			g.submitRecord(ctx, st, audit.KindRequest)
		} else {
			fut := g.cfg.Audit.Submit(context.WithoutCancel(ctx), g.requestEvent(st))
			go fut() // resolution marks the log unhealthy on failure
		}
	}
	if st.outHash != nil {
		g.cfg.Redactor.Release(st.outHash)
		st.outHash = nil
	}
	if g.cfg.Detector != nil && st.p != nil {
		a := st.asked
		var model string // a route's name, never the caller's text for a model no route has
		if st.route != nil {
			model = st.route.Model
		}
		g.cfg.Detector.Observe(obs.Observation{TS: st.start, Principal: st.p.ID, Tenant: st.p.Tenant, IP: st.ipText,
			Model: model, Endpoint: st.endpoint, Prompt: st.prompt, MaxTokens: a.MaxTokens, Logprobs: a.Logprobs,
			TopLogprobs: a.TopLogprobs, LogitBias: a.LogitBias, N: a.N, PromptTokens: st.usage.PromptTokens,
			CompletionTokens: st.usage.CompletionTokens, Decision: st.decision})
	}
}

// recordAnswer records a served answer before its last bytes go out (Config.RecordAnswers):
// the request's event is submitted and awaited, so an answer the client has in full is in
// the log. An error means the answer must not be completed.
func (g *Gateway) recordAnswer(ctx context.Context, st *reqState) error {
	if !g.cfg.RecordAnswers || g.cfg.Records == nil {
		return nil
	}
	st.recorded = true
	return g.awaitRecord(g.submitRecord(ctx, st, audit.KindRequest))
}

// streamStartEvent is a stream's start record: the request's record as it stands when
// the request is forwarded (no status, usage, latency or output HMAC yet).
func (g *Gateway) streamStartEvent(st *reqState) audit.Event {
	ev := g.requestEvent(st)
	ev.Kind = audit.KindStreamStart
	for _, k := range []string{"status", "prompt_tokens", "completion_tokens", "latency_ms", "output_hmac"} {
		delete(ev.Fields, k)
	}
	return ev
}

// submitRecord hands the request's record (appendRecord) to the record sink, written in a
// reused buffer: the sink keeps no caller's bytes (SubmitEncoded copies them into its
// journal segment, where they stay until indexed) — a copy a record on the heap, held from
// fold to fold, was the heap's swing that the runtime's scavenger gave back and the next
// requests faulted in again.
func (g *Gateway) submitRecord(ctx context.Context, st *reqState, kind audit.Kind) audit.Future {
	sp := recordBufs.Get().(*[]byte)
	rec, b := g.appendRecord((*sp)[:0], st, kind)
	f := g.cfg.Records.SubmitEncoded(context.WithoutCancel(ctx), rec)
	if cap(b) <= 4<<10 {
		*sp = b[:0]
		recordBufs.Put(sp)
	}
	return f
}

// appendRecord writes into b the request's log record (kind KindRequest), or its stream's
// start record (KindStreamStart), in canonical bytes: exactly what audit.Event.Marshal gives
// for requestEvent's (streamStartEvent's) event — TestRequestRecordCanonical holds them
// equal — written without its maps, key by key in sorted order. It returns the record (its
// Raw is b's bytes) and b as grown. A record over audit.MaxEventSize (a very long reason)
// goes the event's way, to be truncated (its Raw then its own).
func (g *Gateway) appendRecord(b []byte, st *reqState, kind audit.Kind) (store.AuditEvent, []byte) {
	rec := store.AuditEvent{TS: st.start.UTC(), Kind: string(kind), Decision: st.decision}
	if st.p != nil {
		rec.Principal = audit.ValidUTF8(st.p.ID)
	}
	start := kind == audit.KindStreamStart
	b = append(b, `{"v":1,"ts":"`...)
	b = rec.TS.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = audit.AppendJSONString(b, rec.Kind)
	b = append(b, `,"actor":{`...)
	if st.p != nil {
		b = append(b, `"key_id":`...)
		b = audit.AppendJSONString(b, st.p.KeyID)
		b = append(b, `,"principal":`...)
		b = audit.AppendJSONString(b, st.p.ID)
		b = append(b, `,"tenant":`...)
		b = audit.AppendJSONString(b, st.p.Tenant)
	}
	b = append(b, `},"subject":{"endpoint":`...)
	b = audit.AppendJSONString(b, st.endpoint)
	versioned := st.route != nil && st.rec.Version != ""
	if st.route != nil {
		b = append(b, `,"model":`...)
		b = audit.AppendJSONString(b, st.route.Model)
		if versioned {
			b = append(b, `,"version":`...)
			b = audit.AppendJSONString(b, st.rec.Version)
		}
	}
	b = append(b, `},"decision":`...)
	b = audit.AppendJSONString(b, st.decision)
	b = append(b, `,"reason":`...)
	b = audit.AppendJSONString(b, st.reason)
	b = append(b, `,"fields":{`...)
	key := func(k string) { // our own keys: nothing to escape
		if b[len(b)-1] != '{' {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, k...)
		b = append(b, `":`...)
	}
	field := func(k, v string) {
		key(k)
		b = audit.AppendJSONString(b, v)
	}
	// A number or a digest needs no escaping: written in place, not made a string first.
	number := func(k string, n int64) {
		key(k)
		b = append(b, '"')
		b = strconv.AppendInt(b, n, 10)
		b = append(b, '"')
	}
	if versioned {
		field("classification", st.rec.Attrs.Classification)
	}
	if !start {
		number("completion_tokens", int64(st.usage.CompletionTokens))
	}
	field("country", st.country)
	if st.ip.IsValid() {
		field("ip", g.ipDigest(st.ip))
	}
	if !start {
		number("latency_ms", g.cfg.Now().Sub(st.start).Milliseconds())
	}
	if st.outHash != nil && !start {
		key("output_hmac")
		b = append(b, '"')
		b = audit.AppendHashDigest(b, st.outHash)
		b = append(b, '"')
	}
	if st.prompt != nil {
		key("prompt_hmac")
		b = append(b, '"')
		b = g.cfg.Redactor.AppendDigestBytes(b, st.prompt)
		b = append(b, '"')
	}
	if !start {
		number("prompt_tokens", int64(st.usage.PromptTokens))
		number("status", int64(st.status))
	}
	if st.usage.Estimated {
		field("usage_estimated", "true")
	}
	if st.watermark {
		field("watermark_requested", "true")
		field("watermarked", strconv.FormatBool(st.watermarked))
	}
	b = append(b, "}}"...)
	if y := rec.TS.Year(); len(b) > audit.MaxEventSize || y < 0 || y > 9999 {
		ev := g.requestEvent(st)
		if start {
			ev = g.streamStartEvent(st)
		}
		raw, err := ev.Marshal()
		if errors.Is(err, audit.ErrTooLarge) {
			ev = ev.Truncated()
			raw, err = ev.Marshal()
		}
		if err != nil {
			raw = nil // SubmitEncoded refuses an empty record: the request fails closed
		}
		rec.Raw, rec.Principal = raw, audit.ValidUTF8(ev.Actor["principal"]) // as cut
		return rec, b
	}
	rec.Raw = b
	return rec, b
}

// recordBufs holds submitRecord's buffers.
var recordBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// requestEvent is the request's log record.
func (g *Gateway) requestEvent(st *reqState) audit.Event {
	ev := audit.Event{V: 1, TS: st.start.UTC(), Kind: audit.KindRequest, Decision: st.decision, Reason: st.reason,
		Actor:   map[string]string{},
		Subject: map[string]string{"endpoint": st.endpoint},
		Fields: map[string]string{
			"status": strconv.Itoa(st.status), "country": st.country,
			"prompt_tokens": strconv.Itoa(st.usage.PromptTokens), "completion_tokens": strconv.Itoa(st.usage.CompletionTokens),
			"latency_ms": strconv.FormatInt(g.cfg.Now().Sub(st.start).Milliseconds(), 10),
		}}
	if st.ip.IsValid() {
		ev.Fields["ip"] = g.ipDigest(st.ip)
	}
	if st.usage.Estimated {
		ev.Fields["usage_estimated"] = "true"
	}
	if st.watermark {
		ev.Fields["watermark_requested"] = "true"
		ev.Fields["watermarked"] = strconv.FormatBool(st.watermarked) // what the engine did
	}
	if st.p != nil {
		ev.Actor = map[string]string{"principal": st.p.ID, "tenant": st.p.Tenant, "key_id": st.p.KeyID}
	}
	if st.route != nil {
		ev.Subject["model"] = st.route.Model
		if st.rec.Version != "" {
			ev.Subject["version"] = st.rec.Version
			ev.Fields["classification"] = st.rec.Attrs.Classification
		}
	}
	if st.prompt != nil {
		ev.Fields["prompt_hmac"] = g.cfg.Redactor.Digest(string(st.prompt))
	}
	if st.outHash != nil {
		ev.Fields["output_hmac"] = audit.HashDigest(st.outHash)
	}
	return ev
}

// engineTransport is the Transport of https engines (engineClient's fallback, cloned per
// tenant). Its connections read and write raw too (package rawsock), under TLS.
func engineTransport(upstreamTimeout time.Duration) *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return rawsock.Wrap(c), nil
		},
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: upstreamTimeout,
		DisableCompression:    true,
	}
}
