package gateway

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/engineauth"
	"github.com/strongroom/strongroom/internal/h1"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/mod/sumdb/note"
)

// recorder wraps an upstream to see what the gateway sent and whether the request context
// was cancelled.
type recorder struct {
	h          http.Handler
	mu         sync.Mutex
	lastBody   []byte
	lastTenant string // X-Strongroom-Tenant of the last request
	url        string
	cancelled  chan struct{}
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.lastBody, rc.lastTenant = b, r.Header.Get("X-Strongroom-Tenant")
	rc.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(b))
	rc.h.ServeHTTP(w, r)
}

func (rc *recorder) body() map[string]any {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var m map[string]any
	json.Unmarshal(rc.lastBody, &m)
	return m
}

// testServer is a gateway served for a test by internal/h1, as `strongroom serve` serves
// it (config gateway.http_server, default "h1").
type testServer struct {
	URL      string
	Listener net.Listener
	srv      *h1.Server
}

func serveH1(t testing.TB, h http.Handler, tc *tls.Config) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{URL: "http://" + ln.Addr().String(), Listener: ln, srv: &h1.Server{Handler: h}}
	if tc != nil {
		s.URL = "https://" + ln.Addr().String()
		ln = tls.NewListener(ln, tc)
	}
	go s.srv.Serve(ln)
	return s
}

// Close closes the server and waits for its handlers to return (as httptest's does).
func (s *testServer) Close() {
	s.srv.Close()
	s.srv.Wait()
}

type fixture struct {
	gw      *Gateway
	srv     *testServer
	st      store.Store
	log     *audit.Log
	logDir  string
	up      *recorder
	alice   string // researcher
	bob     string // no role
	limiter *limits.Local
}

func loadModel(t testing.TB) *refmodel.Model {
	dir := filepath.Join(t.TempDir(), "m")
	if err := refmodel.Synthesize(dir, refmodel.DefaultSynth()); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(filepath.Join(dir, "model.safetensors"))
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	m, err := refmodel.LoadModel(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newFixture(t testing.TB, mutate func(*Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.PutPrincipal(ctx, store.Principal{ID: "alice", Tenant: "acme", Roles: []string{"researcher"}, Screening: "clear"})
	st.PutPrincipal(ctx, store.Principal{ID: "bob", Tenant: "acme", Screening: "clear"})
	keys := authn.NewKeys(st, nil, time.Second)
	alice, _, _ := keys.Create(ctx, "alice", 0, nil)
	bob, _, _ := keys.Create(ctx, "bob", 0, nil)
	m := loadModel(t)
	mux := http.NewServeMux()
	wm := func(tenant string) func([]int, []float64) { return func([]int, []float64) {} }
	mux.Handle("/demo/", http.StripPrefix("/demo", &refmodel.Server{Name: "demo", Model: m, APIKey: []byte(engineKey), Watermark: wm}))
	mux.Handle("/frontier/", http.StripPrefix("/frontier", &refmodel.Server{Name: "frontier", Model: m, APIKey: []byte(engineKey)}))
	rec := &recorder{h: mux, cancelled: make(chan struct{}, 1)}
	up := httptest.NewServer(rec)
	rec.url = up.URL
	t.Cleanup(up.Close)
	skey, _, _ := note.GenerateKey(nil, "strongroom.test/gw")
	signer, _ := note.NewSigner(skey)
	logDir := filepath.Join(dir, "log")
	l, err := audit.Open(ctx, audit.Config{Dir: logDir, Signer: signer, Index: st, ShutdownTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	red, _ := audit.NewRedactor(bytes.Repeat([]byte{1}, 32))
	eng, err := policy.NewEngine("", nil)
	if err != nil {
		t.Fatal(err)
	}
	lim := limits.NewLocal(nil)
	cfg := Config{
		Routes: []Route{
			{Model: "demo", Upstreams: []string{up.URL + "/demo/v1"}, UpstreamKey: engineKey},
			{Model: "frontier", Upstreams: []string{up.URL + "/frontier/v1"}, UpstreamKey: engineKey},
		},
		Models: records{
			"demo": {Classification: "public"},
			"frontier": {Classification: "restricted",
				Hardening: &Hardening{LogitBias: "reject", MaxTopLogprobs: 2, MaxN: 1, MaxTokens: 64}},
		},
		Auth: keys, Policy: eng, Limiter: lim, Audit: l, Redactor: red,
		Geo: fixedGeo("US"),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	gw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-registered first: the server stops (its handlers return) before the
	// log closes.
	t.Cleanup(func() { l.Close(context.Background()) })
	srv := serveH1(t, gw, nil)
	t.Cleanup(srv.Close)
	return &fixture{gw: gw, srv: srv, st: st, log: l, logDir: logDir, up: rec, alice: alice, bob: bob, limiter: lim}
}

// engineKey is the fixture engines' bearer secret (what the launcher hands engine and gateway).
const engineKey = "engine-secret"

// records is the fixtures' model records (model name -> attributes, version "1").
type records map[string]modelrec.Attrs

func (r records) Resolve(ref string) (modelrec.Record, bool) {
	name, _ := modelrec.SplitRef(ref)
	a, ok := r[name]
	return modelrec.Record{Name: name, Version: "1", Attrs: a}, ok
}

type fixedGeo string

func (g fixedGeo) Country(netip.Addr) string { return string(g) }

func (f *fixture) client(key string) openai.Client {
	return openai.NewClient(option.WithBaseURL(f.srv.URL+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
}

func TestOpenAIClient(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	c := f.client(f.alice)

	page, err := c.Models.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 2 {
		t.Fatalf("alice sees %d models", len(page.Data))
	}
	bc := f.client(f.bob)
	bobModels, _ := bc.Models.List(ctx)
	if len(bobModels.Data) != 1 || bobModels.Data[0].ID != "demo" {
		t.Fatalf("bob sees %+v", bobModels.Data)
	}

	resp, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "demo", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(8),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != 1 || len(resp.Choices[0].Message.Content) != 8 || resp.Usage.CompletionTokens != 8 {
		t.Fatalf("chat: %+v", resp)
	}

	stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model: "frontier", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(12),
	})
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if chunks < 12 || acc.Choices[0].Message.Content != resp.Choices[0].Message.Content+acc.Choices[0].Message.Content[8:] {
		t.Fatalf("stream: %d chunks, %q", chunks, acc.Choices[0].Message.Content)
	}
	// The gateway asked the upstream for usage but did not pass the usage-only chunk on.
	if acc.Usage.TotalTokens != 0 {
		t.Fatalf("usage chunk forwarded to a client that did not ask: %+v", acc.Usage)
	}
	if so, _ := f.up.body()["stream_options"].(map[string]any); so["include_usage"] != true {
		t.Fatal("gateway did not ask the upstream for usage")
	}

	comp, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: "demo", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("abc")}, MaxTokens: openai.Int(4)})
	if err != nil || len(comp.Choices[0].Text) != 4 {
		t.Fatalf("completions: %+v %v", comp, err)
	}
	emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "demo", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}})
	if err != nil || len(emb.Data) != 1 || len(emb.Data[0].Embedding) == 0 {
		t.Fatalf("embeddings: %v", err)
	}

	// Every request is in the audit log with tokens and HMAC'd prompt and output. The
	// handler records after the client has its answer: stop the server first.
	f.srv.Close()
	f.log.Close(ctx)
	evs, err := f.st.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request", Principal: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 4 {
		t.Fatalf("%d gateway.request events for alice, want 4", len(evs))
	}
	// Events are logged when each handler finishes, which need not be in request order;
	// their timestamps are the requests' starts.
	slices.SortFunc(evs, func(a, b store.AuditEvent) int { return a.TS.Compare(b.TS) })
	for _, e := range evs {
		ev, _ := audit.ParseEvent(e.Raw)
		if ev.Decision != "allow" || !strings.HasPrefix(ev.Fields["prompt_hmac"], "hmac-sha256:") || strings.Contains(string(e.Raw), "hello") {
			t.Fatalf("event %s", e.Raw)
		}
	}
	ev, _ := audit.ParseEvent(evs[1].Raw) // the stream
	if ev.Fields["completion_tokens"] != "12" || ev.Fields["usage_estimated"] != "" {
		t.Fatalf("stream usage not counted from the upstream: %s", evs[1].Raw)
	}
}

func post(t *testing.T, url, key, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp, m
}

func errCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func TestBadInputAndPolicy(t *testing.T) {
	f := newFixture(t, nil)
	url := f.srv.URL + "/v1/chat/completions"
	msg := `"messages":[{"role":"user","content":"hi"}]`
	cases := []struct {
		name, key, body string
		status          int
		code            string
	}{
		{"no key", "", `{"model":"demo",` + msg + `}`, 401, "invalid_api_key"},
		{"bad key", "sr_0000000000000000.AAAA", `{"model":"demo",` + msg + `}`, 401, "invalid_api_key"},
		{"malformed json", f.alice, `{"model":`, 400, "invalid_request"},
		{"unknown model", f.alice, `{"model":"nope",` + msg + `}`, 404, "model_not_found"},
		{"restricted without role", f.bob, `{"model":"frontier",` + msg + `}`, 403, "permission_denied"},
		{"logit_bias on restricted", f.alice, `{"model":"frontier","logit_bias":{"1":5},` + msg + `}`, 403, "permission_denied"},
		{"wide logprobs on restricted", f.alice, `{"model":"frontier","logprobs":true,"top_logprobs":10,` + msg + `}`, 403, "permission_denied"},
		{"huge body", f.alice, `{"model":"demo","x":"` + strings.Repeat("a", 5<<20) + `"}`, 413, "request_too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, m := post(t, url, tc.key, tc.body)
			if resp.StatusCode != tc.status || errCode(m) != tc.code {
				t.Fatalf("got %d %v, want %d %s", resp.StatusCode, m, tc.status, tc.code)
			}
			// The client learns nothing about which policy denied.
			if b, _ := json.Marshal(m); strings.Contains(string(b), "forbid") || strings.Contains(string(b), "permit-") || strings.Contains(string(b), "default deny") {
				t.Fatalf("policy leaked: %s", b)
			}
		})
	}
	// Hardening on a public model: logit_bias stripped, top_logprobs capped, max_tokens capped.
	resp, _ := post(t, url, f.alice, `{"model":"demo","logit_bias":{"1":5},"logprobs":true,"top_logprobs":20,"max_tokens":100000,`+msg+`}`)
	if resp.StatusCode != 200 {
		t.Fatalf("hardened request: %d", resp.StatusCode)
	}
	sent := f.up.body()
	if _, ok := sent["logit_bias"]; ok || sent["top_logprobs"] != float64(5) || sent["max_tokens"] != float64(4096) {
		t.Fatalf("upstream got %v", sent)
	}
	// Within limits on a restricted model, hardening caps what policy allows.
	resp, _ = post(t, url, f.alice, `{"model":"frontier","logprobs":true,"top_logprobs":4,"n":3,`+msg+`}`)
	if resp.StatusCode != 200 {
		t.Fatalf("restricted with logprobs 4: %d", resp.StatusCode)
	}
	if sent := f.up.body(); sent["top_logprobs"] != float64(2) || sent["n"] != float64(1) || sent["max_tokens"] != float64(64) {
		t.Fatalf("restricted hardening: %v", sent)
	}
}

func TestLimits(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.KeyLimits = limits.Limits{RPM: 2} })
	url := f.srv.URL + "/v1/chat/completions"
	body := `{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`
	for i := range 2 {
		if resp, _ := post(t, url, f.alice, body); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	resp, m := post(t, url, f.alice, body)
	if resp.StatusCode != 429 || errCode(m) != "rate_limit_exceeded" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third request: %d %v", resp.StatusCode, m)
	}
	// Another key is not limited by alice's.
	if resp, _ := post(t, url, f.bob, body); resp.StatusCode != 200 {
		t.Fatalf("bob: %d", resp.StatusCode)
	}
}

func TestUpstreamFailures(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	f := newFixture(t, func(c *Config) {
		c.UpstreamTimeout = 300 * time.Millisecond
		c.Routes = append(c.Routes,
			Route{Model: "slow", Upstreams: []string{slow.URL + "/v1"}},
			Route{Model: "dead", Upstreams: []string{deadURL + "/v1"}},
			Route{Model: "failover", Upstreams: []string{deadURL + "/v1", c.Routes[0].Upstreams[0]}, UpstreamKey: engineKey},
		)
		for _, m := range []string{"slow", "dead", "failover"} {
			c.Models.(records)[m] = modelrec.Attrs{Classification: "public"}
		}
	})
	url := f.srv.URL + "/v1/chat/completions"
	msg := `"messages":[{"role":"user","content":"hi"}]`
	if resp, m := post(t, url, f.alice, `{"model":"dead",`+msg+`}`); resp.StatusCode != 502 || errCode(m) != "upstream_unavailable" {
		t.Fatalf("dead upstream: %d %v", resp.StatusCode, m)
	}
	if resp, m := post(t, url, f.alice, `{"model":"slow",`+msg+`}`); resp.StatusCode != 504 || errCode(m) != "upstream_timeout" {
		t.Fatalf("slow upstream: %d %v", resp.StatusCode, m)
	}
	// A connection failure moves on to the next upstream. (The refmodel upstream answers for
	// "demo", so ask for a model name it knows through a route of another name: 404 from it
	// proves the request reached it.)
	resp, _ := post(t, url, f.alice, `{"model":"failover",`+msg+`}`)
	if resp.StatusCode != 404 {
		t.Fatalf("failover: %d", resp.StatusCode)
	}
}

// TestClientDisconnectCancelsUpstream: a client that goes away mid-stream cancels the
// upstream request, and the request is still recorded.
func TestClientDisconnectCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			if _, err := io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"x"}}]}`+"\n\n"); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				close(cancelled)
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}))
	defer up.Close()
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "endless", Upstreams: []string{up.URL + "/v1"}})
		c.Models.(records)["endless"] = modelrec.Attrs{Classification: "public"}
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"endless","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("upstream request not cancelled after the client left")
	}
	f.srv.Close() // waits for the gateway's handler, which records the request, to return
	f.log.Close(context.Background())
	evs, _ := f.st.SearchAudit(context.Background(), store.AuditQuery{Kind: "gateway.request"})
	if len(evs) != 1 {
		t.Fatalf("%d events after a disconnect, want 1", len(evs))
	}
}

type brokenAudit struct{ *audit.Log }

func (brokenAudit) Healthy() error { return errors.New("disk full") }

func TestAuditUnhealthyDenies(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Audit = brokenAudit{c.Audit.(*audit.Log)} })
	resp, m := post(t, f.srv.URL+"/v1/chat/completions", f.alice, `{"model":"demo","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 503 || errCode(m) != "audit_unavailable" {
		t.Fatalf("unhealthy audit: %d %v", resp.StatusCode, m)
	}
	g := newFixture(t, func(c *Config) { c.Health = func() error { return errors.New("store replaced") } })
	resp, m = post(t, g.srv.URL+"/v1/chat/completions", g.alice, `{"model":"demo","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 503 || errCode(m) != "service_unavailable" {
		t.Fatalf("unhealthy store: %d %v", resp.StatusCode, m)
	}
}

type mapGeo map[string]string

func (m mapGeo) Country(ip netip.Addr) string { return m[ip.String()] }

// TestGeoAndProxies: the forwarding header counts only from a trusted proxy; an embargoed
// country is refused even for a public model, an unknown one for a restricted model.
func TestGeoAndProxies(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Geo = mapGeo{"127.0.0.1": "US", "203.0.113.5": "IR", "198.51.100.1": "DE"}
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	g2 := newFixture(t, func(c *Config) { c.Geo = mapGeo{"127.0.0.1": "US", "203.0.113.5": "IR"} }) // no trusted proxies
	do := func(srvURL, model string, xff ...string) int {
		req, _ := http.NewRequest(http.MethodPost, srvURL+"/v1/chat/completions",
			strings.NewReader(`{"model":"`+model+`","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+f.alice)
		for _, line := range xff {
			req.Header.Add("X-Forwarded-For", line)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := do(f.srv.URL, "frontier", "198.51.100.1"); s != 200 {
		t.Fatalf("DE via trusted proxy: %d", s)
	}
	if s := do(f.srv.URL, "demo", "203.0.113.5"); s != 403 {
		t.Fatalf("IR via trusted proxy: %d", s)
	}
	if s := do(f.srv.URL, "frontier", "192.0.2.9"); s != 403 {
		t.Fatalf("unknown country on a restricted model: %d", s)
	}
	// Two header lines are one list: the client is the rightmost untrusted hop (IR), not
	// the first line's address (issue 12, finding 6).
	if s := do(f.srv.URL, "demo", "198.51.100.1", "203.0.113.5"); s != 403 {
		t.Fatalf("embargoed country in a second X-Forwarded-For line: %d", s)
	}
	if s := do(f.srv.URL, "frontier", "203.0.113.5", "198.51.100.1, 127.0.0.9"); s != 200 {
		t.Fatalf("trusted hops skipped from the right: %d", s)
	}
	// A hop that is not an address makes the client unknown, not the entry left of it.
	if s := do(f.srv.URL, "frontier", "198.51.100.1, not-an-ip"); s != 403 {
		t.Fatalf("garbage hop: %d", s)
	}
	// Without a trusted proxy the header is ignored: the peer (US) counts.
	alice2 := g2.alice
	req, _ := http.NewRequest(http.MethodPost, g2.srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+alice2)
	req.Header.Set("X-Forwarded-For", "203.0.113.5")
	resp, _ := http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("spoofed X-Forwarded-For from an untrusted peer changed the country: %d", resp.StatusCode)
	}
}

type downLimiter struct{}

func (downLimiter) Admit(context.Context, []limits.Scope, int) (func(int), *limits.Denied, error) {
	return nil, nil, errors.New("redis: connection refused")
}

// TestLimiterDown: with the shared limiter down, restricted models are refused and public
// ones fall back to local limits.
func TestLimiterDown(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Limiter = downLimiter{}
		c.FallbackLimiter = limits.NewLocal(nil)
	})
	url := f.srv.URL + "/v1/chat/completions"
	msg := `"max_tokens":2,"messages":[{"role":"user","content":"hi"}]`
	if resp, _ := post(t, url, f.alice, `{"model":"demo",`+msg+`}`); resp.StatusCode != 200 {
		t.Fatalf("public model with limiter down: %d", resp.StatusCode)
	}
	if resp, m := post(t, url, f.alice, `{"model":"frontier",`+msg+`}`); resp.StatusCode != 503 || errCode(m) != "limits_unavailable" {
		t.Fatalf("restricted model with limiter down: %d %v", resp.StatusCode, m)
	}
}

// TestLogprobShaping: rounded and noised logprobs; the noise repeats for a repeated query
// (so averaging does not remove it), streams are shaped too.
func TestLogprobShaping(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.Models.(records)["demo"] = modelrec.Attrs{Classification: "public", Hardening: &Hardening{LogitBias: "strip", MaxTopLogprobs: 5, MaxN: 1, MaxTokens: 64, RoundLogprobs: 2, LogprobNoise: 0.5}}
	})
	url := f.srv.URL + "/v1/chat/completions"
	body := `{"model":"demo","max_tokens":4,"logprobs":true,"top_logprobs":3,"messages":[{"role":"user","content":"hello"}]}`
	get := func() []float64 {
		_, m := post(t, url, f.alice, body)
		var out []float64
		c := m["choices"].([]any)[0].(map[string]any)
		for _, e := range c["logprobs"].(map[string]any)["content"].([]any) {
			em := e.(map[string]any)
			out = append(out, em["logprob"].(float64))
			for _, tp := range em["top_logprobs"].([]any) {
				out = append(out, tp.(map[string]any)["logprob"].(float64))
			}
		}
		return out
	}
	a, b := get(), get()
	if len(a) != 16 {
		t.Fatalf("%d logprobs", len(a))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("noise differs between identical queries: %v vs %v", a, b)
		}
		if r := math.Round(a[i]*100) / 100; r != a[i] || a[i] > 0 {
			t.Fatalf("logprob %v not rounded to 2 decimals or positive", a[i])
		}
	}
	// Streamed chunks are shaped as well.
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(strings.Replace(body, `"max_tokens":4`, `"max_tokens":4,"stream":true`, 1)))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	n := 0
	for _, line := range strings.Split(string(raw), "\n") {
		payload, ok := strings.CutPrefix(line, "data: ")
		if !ok || !strings.Contains(payload, `"logprob"`) {
			continue
		}
		var ch map[string]any
		if err := json.Unmarshal([]byte(payload), &ch); err != nil {
			t.Fatalf("shaped chunk is not JSON: %s", payload)
		}
		v := ch["choices"].([]any)[0].(map[string]any)["logprobs"].(map[string]any)["content"].([]any)[0].(map[string]any)["logprob"].(float64)
		if math.Round(v*100)/100 != v {
			t.Fatalf("streamed logprob %v not rounded", v)
		}
		n++
	}
	if n != 4 {
		t.Fatalf("%d shaped stream chunks, want 4", n)
	}
}

func TestLogprobNoiseIsKeyedAndCentered(t *testing.T) {
	s1 := &logprobShaper{sigma: 0.5, key: []byte("k"), ctx: []byte("alice")}
	s2 := &logprobShaper{sigma: 0.5, key: []byte("k"), ctx: []byte("bob")}
	var sum, sumSq float64
	same := 0
	const n = 20000
	for i := range n {
		a := s1.noise(i, "x")
		sum += a
		sumSq += a * a
		if a == s2.noise(i, "x") {
			same++
		}
	}
	mean, std := sum/n, math.Sqrt(sumSq/n-(sum/n)*(sum/n))
	if math.Abs(mean) > 0.02 || math.Abs(std-0.5) > 0.02 {
		t.Fatalf("noise mean %.4f std %.4f, want 0 and 0.5", mean, std)
	}
	if same > 0 {
		t.Fatalf("%d identical noise values across principals", same)
	}
}

// TestMTLS: a client certificate from the configured CA identifies a registered principal;
// one from another CA is refused by TLS; no certificate falls back to the bearer token.
func TestMTLS(t *testing.T) {
	f := newFixture(t, func(c *Config) {})
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strongroom test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	client := func(signer *x509.Certificate, signerKey *ecdsa.PrivateKey, principal string) tls.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(authn.PrincipalURIPrefix + principal)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "ignored"}, URIs: []*url.URL{u},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, signer, &k.PublicKey, signerKey)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	gw, _ := New(Config{Routes: f.gw.cfg.Routes, Models: f.gw.cfg.Models, Auth: f.gw.cfg.Auth, Certs: authn.Certs{St: f.st}, Policy: f.gw.cfg.Policy,
		Limiter: limits.NewLocal(nil), Audit: f.log, Redactor: f.gw.cfg.Redactor, Geo: fixedGeo("US")})
	srv := httptest.NewUnstartedServer(gw)
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	srv.StartTLS()
	defer srv.Close()
	// The same requests to net/http's server and to h1's (the gateway's default), both
	// over TLS with srv's certificate.
	fast := serveH1(t, gw, srv.TLS.Clone())
	defer fast.Close()
	url := srv.URL
	do := func(cert *tls.Certificate, bearer string) int {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
		req, _ := http.NewRequest(http.MethodPost, url+"/v1/chat/completions",
			strings.NewReader(`{"model":"frontier","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`))
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			return -1 // refused by TLS
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	alice := client(ca, caKey, "alice")
	bob := client(ca, caKey, "bob") // registered, but no role for the restricted model
	ghost := client(ca, caKey, "ghost")
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	selfSigned := client(&x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "evil CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}, otherKey, "alice")
	for _, url = range []string{srv.URL, fast.URL} {
		mtlsChecks(t, do, alice, bob, ghost, selfSigned, f.alice)
	}
}

func mtlsChecks(t *testing.T, do func(*tls.Certificate, string) int, alice, bob, ghost, selfSigned tls.Certificate, bearer string) {
	t.Helper()
	if s := do(&alice, ""); s != 200 {
		t.Fatalf("alice by certificate: %d", s)
	}
	if s := do(&bob, ""); s != 403 {
		t.Fatalf("bob by certificate: %d", s)
	}
	if s := do(&ghost, ""); s != 401 {
		t.Fatalf("unregistered principal: %d", s)
	}
	if s := do(&selfSigned, ""); s != -1 && s != 401 {
		t.Fatalf("certificate from another CA: %d", s)
	}
	if s := do(nil, bearer); s != 200 {
		t.Fatalf("no certificate, bearer token: %d", s)
	}
}

// TestHealthCheck: an upstream whose /models fails is skipped in favour of a healthy one.
func TestHealthCheck(t *testing.T) {
	var sick atomicBool
	hits := make(chan string, 100)
	mk := func(name string, unhealthy *atomicBool) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/models") {
				if unhealthy != nil && unhealthy.get() {
					http.Error(w, "down", 503)
					return
				}
				w.Write([]byte(`{"data":[]}`))
				return
			}
			hits <- name
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}`))
		}))
	}
	a, b := mk("a", &sick), mk("b", nil)
	defer a.Close()
	defer b.Close()
	f := newFixture(t, func(c *Config) {
		c.Routes = []Route{{Model: "demo", Upstreams: []string{a.URL + "/v1", b.URL + "/v1"}}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sick.set(true)
	go f.gw.HealthCheck(ctx, 50*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	if resp, _ := post(t, f.srv.URL+"/v1/chat/completions", f.alice, `{"model":"demo","messages":[]}`); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := <-hits; got != "b" {
		t.Fatalf("request went to the unhealthy upstream %s", got)
	}
}

type atomicBool struct {
	mu sync.Mutex
	v  bool
}

func (a *atomicBool) get() bool  { a.mu.Lock(); defer a.mu.Unlock(); return a.v }
func (a *atomicBool) set(v bool) { a.mu.Lock(); a.v = v; a.mu.Unlock() }

func TestParseUsage(t *testing.T) {
	for in, want := range map[string]Usage{
		`{"choices":[{"message":{"content":"the \"usage\": 3"}}],"usage":{"prompt_tokens":5,"completion_tokens":7}}`: {PromptTokens: 5, CompletionTokens: 7},
		`{"usage":{"prompt_tokens":1,"completion_tokens":2},"choices":[]}`:                                           {PromptTokens: 1, CompletionTokens: 2},
		`{"choices":[]}`:                        {},
		`{"usage":null,"choices":[]}`:           {},
		`{"usage": null}`:                       {},
		"{\"usage\": \n {\"prompt_tokens\":3}}": {PromptTokens: 3},
		// the scan's shapes and the decoder's: both give the same
		`{"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}}}`: {PromptTokens: 9, CompletionTokens: 4},
		`{"usage":{"prompt_tokens":1,"prompt_tokens":8}}`:                                                                   {PromptTokens: 8},
		`{"usage":{"PROMPT_TOKENS":6,"completion_tokens":2}}`:                                                               {PromptTokens: 6, CompletionTokens: 2},
		`{"usage":{"\u0070rompt_tokens":5}}`:                                                                                {PromptTokens: 5},
		`{"usage":{"prompt_tokens":5.0}}`:                                                                                   {},
		`{"usage":{"prompt_tokens":"5"}}`:                                                                                   {},
		`{"usage":{"prompt_tokens":null,"completion_tokens":3}}`:                                                            {CompletionTokens: 3},
		`{"usage":{"prompt_tokens":05}}`:                                                                                    {},
		`{"usage":{"prompt_tokens":-5,"completion_tokens":100}}`:                                                            {}, // a negative count is not believed
		`{"usage":{"prompt_tokens":1,"x":[1,{"a":"}"}],"completion_tokens":2}}`:                                             {PromptTokens: 1, CompletionTokens: 2},
	} {
		got, _ := parseUsage([]byte(in))
		if got != want {
			t.Errorf("%s: %+v, want %+v", in, got, want)
		}
	}
}

// TestUsageScanNoAlloc: an engine's usage block, as engines send it, is read by the scan
// and costs no allocation.
func TestUsageScanNoAlloc(t *testing.T) {
	body := []byte(`{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":0}}}`)
	if _, _, sure := scanUsage(body[bytes.LastIndex(body, usageKey)+len(usageKey):]); !sure {
		t.Fatal("the common shape went to encoding/json")
	}
	if n := testing.AllocsPerRun(100, func() { parseUsage(body) }); n != 0 {
		t.Fatalf("parseUsage allocates %v times", n)
	}
}

// FuzzUsageScan: the allocation-free scan of a usage block gives encoding/json's answer
// whenever it answers at all.
func FuzzUsageScan(f *testing.F) {
	for _, s := range []string{`{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}`, `{"prompt_tokens":1,"prompt_tokens":-0}`,
		`{"Prompt_tokens":3}`, `{"completion_tokens":123456789012345678}`, `{"a":{"b":1,"c":2},"prompt_tokens":7}`, `{}`, ` { "prompt_tokens" : 2 } x`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, ok, sure := scanUsage(b)
		if !sure {
			return
		}
		du, dok := decodeUsage(b)
		if ok != dok || u != du {
			t.Fatalf("%q: scan %+v %v, encoding/json %+v %v", b, u, ok, du, dok)
		}
	})
}

// FuzzRequestAndResponse: the parsers of client bodies and upstream answers never panic,
// and a hardened body is still JSON without the stripped fields.
func FuzzRequestAndResponse(f *testing.F) {
	f.Add([]byte(`{"model":"m","logit_bias":{"1":5},"logprobs":true,"top_logprobs":20,"n":9,"max_tokens":99999,"stream":true,"messages":[]}`))
	f.Add([]byte(`{"model":"m","logprobs":7,"prompt":"x"}`))
	f.Add([]byte(`{"choices":[{"logprobs":{"content":[{"token":"a","logprob":-1.5,"top_logprobs":[{"token":"b","logprob":-2}]}]}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}`))
	h := DefaultHardening()
	s := &logprobShaper{decimals: 2, sigma: 0.3, key: []byte("k"), ctx: []byte("c")}
	f.Fuzz(func(t *testing.T, body []byte) {
		var feat features
		if json.Unmarshal(body, &feat) == nil {
			feat.logprobs()
			feat.prompt()
			out, err := applyHardening(h, body, &feat, "chat")
			if err == nil && !json.Valid(out) {
				t.Fatalf("hardened body is not JSON: %q", out)
			}
			if err == nil && len(feat.LogitBias) > 0 && bytes.Contains(out, []byte(`"logit_bias"`)) && !bytes.Equal(out, body) {
				t.Fatalf("logit_bias survived stripping: %q", out)
			}
		}
		parseUsage(body)
		s.rewrite(body) // must not panic
	})
}

type fixedSanction struct {
	action obs.Action
	since  time.Time
}

func (s fixedSanction) Sanction(string) (obs.Action, time.Time) { return s.action, s.since }

// mfaAuth wraps an authenticator: the token "mfa:<key>" is that key's principal after a
// fresh MFA (as an OIDC token with auth_time and amr would be).
type mfaAuth struct{ Authenticator }

func (m mfaAuth) Authenticate(ctx context.Context, tok string) (*authn.Principal, error) {
	key, fresh := strings.CutPrefix(tok, "mfa:")
	p, err := m.Authenticator.Authenticate(ctx, key)
	if err == nil && fresh {
		cp := *p
		cp.MFAAt = time.Now()
		p = &cp
	}
	return p, err
}

// TestStepUp: a step_up sanction answers 401 insufficient_user_authentication (RFC 9470)
// until the caller authenticates with MFA after the sanction began; suspend is 403.
func TestStepUp(t *testing.T) {
	body := `{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
	f := newFixture(t, func(c *Config) {
		c.Auth = mfaAuth{c.Auth}
		c.Sanctions = fixedSanction{"step_up", time.Now().Add(-time.Minute)}
	})
	resp, m := post(t, f.srv.URL+"/v1/chat/completions", f.alice, body)
	if resp.StatusCode != 401 || errCode(m) != "insufficient_user_authentication" ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_user_authentication"`) {
		t.Fatalf("without fresh MFA: %d %v %q", resp.StatusCode, m, resp.Header.Get("WWW-Authenticate"))
	}
	if resp, m := post(t, f.srv.URL+"/v1/chat/completions", "mfa:"+f.alice, body); resp.StatusCode != 200 {
		t.Fatalf("after fresh MFA: %d %v", resp.StatusCode, m)
	}
	g := newFixture(t, func(c *Config) { c.Sanctions = fixedSanction{"suspend", time.Now()} })
	if resp, m := post(t, g.srv.URL+"/v1/chat/completions", g.alice, body); resp.StatusCode != 403 {
		t.Fatalf("suspended: %d %v", resp.StatusCode, m)
	}
}

// TestWatermarkPolicy: on a watermarking route the engine is told the tenant unless policy
// forbids watermarking for that tenant; the audit event says which.
func TestWatermarkPolicy(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "exempt.cedar"), []byte(`forbid (principal in Tenant::"exempt", action == Action::"watermark", resource);`), 0o644)
	// Tenant "strict" must be watermarked detectably: no greedy decoding (issue 12, finding 10).
	os.WriteFile(filepath.Join(dir, "strict.cedar"), []byte(`forbid (principal in Tenant::"strict", action == Action::"infer", resource) when { context.temperature_milli < 500 };`), 0o644)
	eng, err := policy.NewEngine(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *Config) {
		c.Policy = eng
		c.Models.(records)["demo"] = modelrec.Attrs{Classification: "public", Watermark: true}
	})
	ctx := context.Background()
	f.st.PutPrincipal(ctx, store.Principal{ID: "carol", Tenant: "exempt", Roles: []string{"researcher"}, Screening: "clear"})
	carol, _, _ := authn.NewKeys(f.st, nil, time.Second).Create(ctx, "carol", 0, nil)
	body := `{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
	for _, c := range []struct{ key, want string }{{f.alice, "acme"}, {carol, ""}} {
		if resp, m := post(t, f.srv.URL+"/v1/chat/completions", c.key, body); resp.StatusCode != 200 {
			t.Fatalf("%d %v", resp.StatusCode, m)
		}
		f.up.mu.Lock()
		got := f.up.lastTenant
		f.up.mu.Unlock()
		if got != c.want {
			t.Fatalf("engine told tenant %q, want %q", got, c.want)
		}
	}
	f.st.PutPrincipal(ctx, store.Principal{ID: "dave", Tenant: "strict", Roles: []string{"researcher"}, Screening: "clear"})
	dave, _, _ := authn.NewKeys(f.st, nil, time.Second).Create(ctx, "dave", 0, nil)
	for temp, want := range map[string]int{"": 403, `"temperature":0.2,`: 403, `"temperature":0.7,`: 200} {
		if resp, _ := post(t, f.srv.URL+"/v1/chat/completions", dave, `{`+temp+body[1:]); resp.StatusCode != want {
			t.Fatalf("strict tenant with %q: %d, want %d", temp, resp.StatusCode, want)
		}
	}
	// The engine is not open to callers other than the gateway, and a tenant it is told
	// must be signed by the gateway for this body (issue 12, finding 7).
	direct := func(hdr map[string]string) int {
		req, _ := http.NewRequest(http.MethodPost, f.up.url+"/demo/v1/chat/completions", strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := direct(nil); s != 401 {
		t.Fatalf("engine without credentials: %d", s)
	}
	if s := direct(map[string]string{"Authorization": "Bearer " + engineKey, "X-Strongroom-Tenant": "acme"}); s != 401 {
		t.Fatalf("unsigned tenant: %d", s)
	}
	if s := direct(map[string]string{"Authorization": "Bearer " + engineKey, "X-Strongroom-Tenant": "acme",
		"X-Strongroom-Tenant-Sig": engineauth.SignTenant([]byte(engineKey), "acme", []byte(`{"other":"body"}`))}); s != 401 {
		t.Fatalf("tenant signature moved from another body: %d", s)
	}
	// The log says what the engine did: greedy decoding (temperature 0, the default) is not
	// watermarked, sampling is.
	for _, temp := range []string{"", `"temperature":0.8,`} {
		if resp, m := post(t, f.srv.URL+"/v1/chat/completions", f.alice, `{`+temp+body[1:]); resp.StatusCode != 200 {
			t.Fatalf("%d %v", resp.StatusCode, m)
		}
	}
	f.srv.Close()
	f.log.Close(ctx)
	evs, _ := f.st.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request", Principal: "alice"})
	var marks []string
	for _, e := range evs {
		var ev audit.Event
		json.Unmarshal(e.Raw, &ev)
		marks = append(marks, ev.Fields["watermarked"])
	}
	slices.Sort(marks)
	if d := cmp.Diff([]string{"false", "false", "true"}, marks); d != "" {
		t.Fatalf("watermarked fields (-want +got):\n%s", d)
	}
}

// TestUnauthenticatedFlood: keyless requests are all counted, but recorded as one summary
// per source network and window, not one log entry each (issue 12, finding 11).
func TestUnauthenticatedFlood(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	const n = 500
	body := `{"model":"demo","messages":[{"role":"user","content":"hi"}]}`
	for i := range n {
		key := ""
		if i%2 == 1 {
			key = "sr_0000000000000000.AAAA"
		}
		if resp, _ := post(t, f.srv.URL+"/v1/chat/completions", key, body); resp.StatusCode != 401 {
			t.Fatalf("keyless request: %d", resp.StatusCode)
		}
	}
	if resp, _ := post(t, f.srv.URL+"/v1/chat/completions", f.alice, body); resp.StatusCode != 200 {
		t.Fatalf("authenticated request: %d", resp.StatusCode)
	}
	f.srv.Close()
	f.gw.FlushRefusals(ctx)
	f.log.Close(ctx)
	sums, err := f.st.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.unauthenticated"})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 {
		t.Fatalf("%d summaries, want 1 (one network, one status)", len(sums))
	}
	var ev audit.Event
	if err := json.Unmarshal(sums[0].Raw, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Fields["count"] != fmt.Sprint(n) || ev.Fields["status"] != "401" {
		t.Fatalf("summary %+v", ev.Fields)
	}
	reqs, _ := f.st.SearchAudit(ctx, store.AuditQuery{Kind: "gateway.request"})
	if len(reqs) != 1 {
		t.Fatalf("%d gateway.request events, want only the authenticated one", len(reqs))
	}
	if all, _ := f.st.SearchAudit(ctx, store.AuditQuery{}); len(all) != 2 {
		t.Fatalf("log holds %d entries after %d refusals and one request, want 2", len(all), n)
	}
	if got := testutil.ToFloat64(f.gw.refused.counter.WithLabelValues("401")); got != n {
		t.Fatalf("counter %v, want %d", got, n)
	}
}

// TestModelRecord: what may be done with a model comes from its inventory record, read on
// every request: a route without a record (or whose version is disabled) is not served,
// and a change to the record (countries, hardening) applies to the next request without a
// new gateway. "NAME" routes follow the newest enabled version.
func TestModelRecord(t *testing.T) {
	tbl := modelrec.NewTable()
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "demo:2", Upstreams: c.Routes[0].Upstreams, UpstreamKey: engineKey})
		c.Models = tbl
	})
	url := f.srv.URL + "/v1/chat/completions"
	body := func(model string) string {
		return `{"model":"` + model + `","max_tokens":2,"logit_bias":{"5":1},"messages":[{"role":"user","content":"hi"}]}`
	}
	status := func(model string) int {
		t.Helper()
		resp, _ := post(t, url, f.alice, body(model))
		return resp.StatusCode
	}
	if got := status("demo"); got != http.StatusServiceUnavailable {
		t.Fatalf("no record: status %d, want 503", got)
	}
	t0 := time.Now()
	v1 := modelrec.Record{Name: "demo", Version: "1", Created: t0, Attrs: modelrec.Attrs{Classification: "public", Hardening: &Hardening{LogitBias: "allow", MaxN: 1, MaxTokens: 8}}}
	v2 := modelrec.Record{Name: "demo", Version: "2", Created: t0.Add(time.Second), Attrs: modelrec.Attrs{Classification: "public"}}
	tbl.Set([]modelrec.Record{v1, v2})
	// "demo" is the newest version, 2, with default hardening: logit_bias stripped.
	if got := status("demo"); got != 200 {
		t.Fatalf("status %d", got)
	}
	if _, ok := f.up.body()["logit_bias"]; ok {
		t.Fatal("demo (v2, default hardening) forwarded logit_bias")
	}
	// Disable v2: "demo" falls back to v1 (logit_bias allowed); "demo:2" is not served.
	v2.Disabled = true
	tbl.Set([]modelrec.Record{v1, v2})
	if got := status("demo"); got != 200 {
		t.Fatalf("status %d", got)
	}
	if _, ok := f.up.body()["logit_bias"]; !ok {
		t.Fatal("demo (v1, logit_bias allowed) did not forward logit_bias")
	}
	if got := status("demo:2"); got != http.StatusServiceUnavailable {
		t.Fatalf("disabled demo:2: status %d, want 503", got)
	}
	// Countries: the fixture's clients are in the US.
	v1.Attrs.DeniedCountries = []string{"US"}
	tbl.Set([]modelrec.Record{v1, v2})
	if got := status("demo"); got != http.StatusForbidden {
		t.Fatalf("denied country: status %d, want 403", got)
	}
	v1.Attrs.DeniedCountries, v1.Attrs.AllowedCountries = nil, []string{"GB"}
	tbl.Set([]modelrec.Record{v1, v2})
	if got := status("demo"); got != http.StatusForbidden {
		t.Fatalf("not an allowed country: status %d, want 403", got)
	}
	v1.Attrs.AllowedCountries = []string{"GB", "US"}
	tbl.Set([]modelrec.Record{v1, v2})
	if got := status("demo"); got != 200 {
		t.Fatalf("allowed country: status %d", got)
	}
	// The record's version is in the log entry (recorded after the answer: stop first).
	f.srv.Close()
	f.log.Close(context.Background())
	evs, err := f.st.SearchAudit(context.Background(), store.AuditQuery{Kind: "gateway.request"})
	if err != nil || len(evs) == 0 {
		t.Fatalf("no request events: %v", err)
	}
	if !bytes.Contains(evs[len(evs)-1].Raw, []byte(`"version":"1"`)) {
		t.Fatalf("last request event does not name the version: %s", evs[len(evs)-1].Raw)
	}
}

// TestLateEngine: an engine that starts after the gateway found its address down is used
// at once when it is the route's only upstream (the down mark only steers between
// upstreams), not after the next health probe.
func TestLateEngine(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "late", Upstreams: []string{"http://" + addr + "/v1"}})
		c.Models.(records)["late"] = modelrec.Attrs{Classification: "public"}
	})
	body := `{"model":"late","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`
	if resp, _ := post(t, f.srv.URL+"/v1/chat/completions", f.alice, body); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("no engine yet: status %d", resp.StatusCode)
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	srv := &http.Server{Handler: &refmodel.Server{Name: "late", Fixed: "ok"}}
	go srv.Serve(ln)
	defer srv.Close()
	if resp, m := post(t, f.srv.URL+"/v1/chat/completions", f.alice, body); resp.StatusCode != 200 {
		t.Fatalf("engine up: status %d %v", resp.StatusCode, m)
	}
}

// TestTracing: with a tracer, a request's span continues the client's W3C trace context,
// the engine receives a traceparent of the same trace (a child of the gateway's span), and
// the spans carry the routed model and status but not the prompt.
func TestTracing(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	var seen atomic.Value
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("traceparent"))
		(&refmodel.Server{Name: "traced", Fixed: "ok"}).ServeHTTP(w, r)
	}))
	defer engine.Close()
	f := newFixture(t, func(c *Config) {
		c.Tracer = tp.Tracer("strongroom/gateway")
		c.Routes = append(c.Routes, Route{Model: "traced", Upstreams: []string{engine.URL + "/v1"}})
		c.Models.(records)["traced"] = modelrec.Attrs{Classification: "public"}
	})
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"traced","max_tokens":2,"messages":[{"role":"user","content":"SECRET-PROMPT"}]}`))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	tp2, _ := seen.Load().(string)
	if !strings.HasPrefix(tp2, "00-"+traceID+"-") || strings.Contains(tp2, "00f067aa0ba902b7") {
		t.Fatalf("engine got traceparent %q: want trace %s with the gateway's own span id", tp2, traceID)
	}
	var spans tracetest.SpanStubs
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if spans = exp.GetSpans(); len(spans) == 2 {
			break
		}
	}
	if len(spans) != 2 {
		t.Fatalf("%d spans, want gateway and upstream", len(spans))
	}
	byName := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		byName[s.Name] = s
		if s.SpanContext.TraceID().String() != traceID {
			t.Errorf("span %s in trace %s", s.Name, s.SpanContext.TraceID())
		}
		for _, a := range s.Attributes {
			if strings.Contains(a.Value.Emit(), "SECRET-PROMPT") {
				t.Errorf("span %s carries the prompt in %s", s.Name, a.Key)
			}
		}
	}
	gw, up := byName["gateway chat"], byName["upstream"]
	if up.Parent.SpanID() != gw.SpanContext.SpanID() || !strings.Contains(tp2, up.SpanContext.SpanID().String()) {
		t.Fatalf("upstream span is not the gateway span's child named in traceparent: %+v", spans)
	}
	attrs := map[string]string{}
	for _, a := range gw.Attributes {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	if attrs["gen_ai.request.model"] != "traced" || attrs["http.response.status_code"] != "200" || attrs["strongroom.decision"] != "allow" {
		t.Fatalf("gateway span attributes %v", attrs)
	}
}

// failingRecords refuses every record, as a log that cannot write does.
type failingRecords struct{}

func (failingRecords) SubmitEncoded(_ context.Context, rec store.AuditEvent) audit.Future {
	mustParseRecord(rec)
	return func() (uint64, error) { return 0, audit.ErrUnavailable }
}

// mustParseRecord reads a request record as the log's verifier does (strict, canonical
// form only) and checks the index fields the gateway gave with it; a fake record sink
// panics on a record the real log would refuse.
func mustParseRecord(rec store.AuditEvent) *audit.Event {
	ev, err := parseRecord(rec)
	if err != nil {
		panic(fmt.Sprintf("%v: %.200s", err, rec.Raw))
	}
	return ev
}

// parseRecord is the check behind mustParseRecord: the record parses strictly and its
// index fields are those its bytes carry.
func parseRecord(rec store.AuditEvent) (*audit.Event, error) {
	ev, err := audit.ParseEvent(rec.Raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("record not canonical: %v", err)
	case string(ev.Kind) != rec.Kind:
		return nil, fmt.Errorf("index kind %q, bytes %q", rec.Kind, ev.Kind)
	case ev.Actor["principal"] != rec.Principal:
		return nil, fmt.Errorf("index principal (%d bytes) %.40q..., bytes carry (%d bytes) %.40q...",
			len(rec.Principal), rec.Principal, len(ev.Actor["principal"]), ev.Actor["principal"])
	case ev.Decision != rec.Decision:
		return nil, fmt.Errorf("index decision %q, bytes %q", rec.Decision, ev.Decision)
	case !ev.TS.Equal(rec.TS):
		return nil, fmt.Errorf("index ts %v, bytes %v", rec.TS, ev.TS)
	}
	return ev, nil
}

func (failingRecords) Healthy() error { return nil }

// TestRecordAnswers: with RecordAnswers, an answer the client has in full is in the log —
// its batch bundle is on disk when the response arrives — and an answer that cannot be
// recorded is not completed: 503 instead of the body, a stream without [DONE].
func TestRecordAnswers(t *testing.T) {
	var b *audit.Batcher
	hold := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"one"}}]}`+"\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	f := newFixture(t, func(c *Config) {
		c.RecordAnswers = true
		c.Routes = append(c.Routes, Route{Model: "slow", Upstreams: []string{slow.URL + "/v1"}})
		c.Models.(records)["slow"] = modelrec.Attrs{Classification: "public"}
	})
	b = audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, audit.BatcherConfig{MaxDelay: 5 * time.Millisecond})
	t.Cleanup(b.Close)
	f.gw.cfg.Records = b
	url := f.srv.URL + "/v1/chat/completions"
	body := `{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`
	bundles := func() (n int) {
		filepath.WalkDir(filepath.Join(f.logDir, "batches"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if raw, _ := os.ReadFile(p); bytes.Contains(raw, []byte(`"principal":"alice"`)) {
					n++
				}
			}
			return nil
		})
		return n
	}
	if resp, m := post(t, url, f.alice, body); resp.StatusCode != 200 {
		t.Fatalf("status %d %v", resp.StatusCode, m)
	}
	if bundles() != 1 {
		t.Fatal("the answer arrived before its record was written")
	}
	stream := `{"model":"demo","max_tokens":2,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
	resp, raw := postRaw(t, url, f.alice, stream)
	if resp.StatusCode != 200 || !strings.HasSuffix(strings.TrimSpace(raw), "data: [DONE]") {
		t.Fatalf("stream: %d %q", resp.StatusCode, raw)
	}
	if bundles() < 2 {
		t.Fatal("the stream ended before its record was written")
	}
	starts := func() (n int) {
		filepath.WalkDir(filepath.Join(f.logDir, "batches"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				raw, _ := os.ReadFile(p)
				n += bytes.Count(raw, []byte(`"kind":"gateway.stream_start"`))
			}
			return nil
		})
		return n
	}
	if starts() != 1 {
		t.Fatalf("%d stream start records, want 1", starts())
	}
	// The start is durable before the first byte: an upstream that sends one event and
	// then waits lets the client read that event only once the start record is written.
	started := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(strings.Replace(stream, `"demo"`, `"slow"`, 1)))
		req.Header.Set("Authorization", "Bearer "+f.alice)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			started <- -1
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			started <- -resp.StatusCode
			return
		}
		buf := make([]byte, 16)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			started <- -2
			return
		}
		started <- starts()
	}()
	n := <-started
	close(hold)
	if n != 2 {
		t.Fatalf("first bytes of a stream read with %d start records on disk, want 2", n)
	}
	// That request is over (its end recorded) before the configuration changes under it.
	for slowRecords := 0; slowRecords < 2; {
		slowRecords = 0
		filepath.WalkDir(filepath.Join(f.logDir, "batches"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				raw, _ := os.ReadFile(p)
				slowRecords += bytes.Count(raw, []byte(`"model":"slow"`))
			}
			return nil
		})
		time.Sleep(5 * time.Millisecond)
	}
	b.Barrier(context.Background()) // and ordered after it: its Submit released the batcher's lock

	f.gw.cfg.Records = failingRecords{}
	if resp, m := post(t, url, f.alice, body); resp.StatusCode != http.StatusServiceUnavailable || m["choices"] != nil {
		t.Fatalf("unrecordable answer: %d %v", resp.StatusCode, m)
	}
	resp, raw = postRaw(t, url, f.alice, stream)
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Contains(raw, "data:") {
		t.Fatalf("an unrecorded stream was started: %d %q", resp.StatusCode, raw)
	}
}

func postRaw(t *testing.T, url, key, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestStreamEventsNotHeld: each event the upstream sends reaches the client before the
// upstream sends the next one (the gateway coalesces only events already received; it never
// waits on the upstream with an event unsent). The upstream here sends its second event only
// once the client has read the first: a held event would hang the test.
func TestStreamEventsNotHeld(t *testing.T) {
	got := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		ev := func(s string) {
			fmt.Fprintf(w, "data: %s\n\n", s)
			w.(http.Flusher).Flush()
		}
		// The first event and half of the second in one write: the first must not wait for
		// the rest of the second.
		fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"one"}}]}`+"\n\n"+`data: {"id":"c",`)
		w.(http.Flusher).Flush()
		select {
		case <-got:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, `"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"two"}}]}`+"\n\n")
		ev("[DONE]")
	}))
	defer up.Close()
	f := newFixture(t, func(c *Config) { c.Routes[0].Upstreams = []string{up.URL + "/v1"} })
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	var seen []string
	for {
		line, err := br.ReadString('\n')
		if strings.Contains(line, `"one"`) {
			close(got)
		}
		if strings.HasPrefix(line, "data: ") {
			seen = append(seen, strings.TrimSpace(line))
		}
		if err != nil {
			break
		}
	}
	if len(seen) != 3 || !strings.Contains(seen[1], `"two"`) || seen[2] != "data: [DONE]" {
		t.Fatalf("events: %q", seen)
	}
}
