package gateway

// Outside round 56: getting past, or abusing, the gateway's usage limits (rpm, tpm,
// concurrent, daily_tokens per key, tenant and model), alone and in a fleet of replicas
// sharing one Redis. Every request goes to the gateway over TCP (net/http clients or a raw
// socket); the limiter is the real one (limits.Local or limits.Redis against the Redis of
// scripts/test), at most wrapped to see the estimate a request was admitted on and the
// tokens its release reported.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// o56Settled is one admitted request as the limiter saw it: the estimate it was admitted
// on and the tokens its release reported.
type o56Settled struct{ est, actual int }

// o56Limiter wraps a real limiter and reports every admitted request once it is released.
type o56Limiter struct {
	inner    limits.Limiter
	settled  chan o56Settled
	admitted atomic.Int64 // admissions so far (counted before Admit returns)
}

func newO56Limiter(inner limits.Limiter) *o56Limiter {
	return &o56Limiter{inner: inner, settled: make(chan o56Settled, 1024)}
}

func (l *o56Limiter) Admit(ctx context.Context, sc []limits.Scope, est int) (func(int), *limits.Denied, error) {
	done, d, err := l.inner.Admit(ctx, sc, est)
	if err != nil || d != nil {
		return done, d, err
	}
	l.admitted.Add(1)
	return func(actual int) {
		done(actual)
		l.settled <- o56Settled{est, actual}
	}, nil, nil
}

// next waits (60 s at most) for the next released request.
func (l *o56Limiter) next(t *testing.T) o56Settled {
	t.Helper()
	select {
	case s := <-l.settled:
		return s
	case <-time.After(60 * time.Second):
		t.Fatal("no request was released within 60 s")
		return o56Settled{}
	}
}

// o56Engine is a fake engine with three behaviours, by the request's model:
//   - "pump": a stream of many content events as fast as it can write (the usage event only
//     at the end, as OpenAI and vLLM send it), until the gateway stops reading;
//   - "hold": one content event, then waits for release before its usage and [DONE]
//     (non-streamed: waits, then answers);
//   - "silent": takes the request and never answers (until the gateway hangs up).
//
// arrived gets the model of every request it received whole.
type o56Engine struct {
	srv      *httptest.Server
	arrived  chan string
	release  chan struct{}
	inflight atomic.Int64
	maxSeen  atomic.Int64
}

const o56Content = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" // 96 bytes

func newO56Engine(t *testing.T) *o56Engine {
	e := &o56Engine{arrived: make(chan string, 1024), release: make(chan struct{})}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Model  string `json:"model"`
			Stream bool   `json:"stream"`
		}
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &req)
		n := e.inflight.Add(1)
		defer e.inflight.Add(-1)
		for {
			m := e.maxSeen.Load()
			if n <= m || e.maxSeen.CompareAndSwap(m, n) {
				break
			}
		}
		e.arrived <- req.Model
		fl := w.(http.Flusher)
		event := func(s string) bool {
			_, err := io.WriteString(w, "data: "+s+"\n\n")
			return err == nil
		}
		chunk := `{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"` + o56Content + `"}}]}`
		usage := `{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":%d,"total_tokens":%d}}`
		switch req.Model {
		case "pump":
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			i := 0
			for ; i < 20000 && r.Context().Err() == nil; i++ {
				if !event(chunk) {
					return
				}
				if i%16 == 0 {
					fl.Flush()
				}
			}
			event(fmt.Sprintf(usage, i*24, 10+i*24))
			event("[DONE]")
		case "hold":
			if req.Stream {
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(200)
				event(chunk)
				fl.Flush()
			}
			select {
			case <-e.release:
			case <-r.Context().Done():
				return
			}
			if req.Stream {
				event(fmt.Sprintf(usage, 24, 34))
				event("[DONE]")
				return
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"id":"c","object":"chat.completion","model":"hold","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}`)
		default: // silent
			<-r.Context().Done()
		}
	}))
	t.Cleanup(e.srv.Close)
	return e
}

// o56Routes adds the fake engine's models (public) to a fixture's config.
func o56Routes(c *Config, e *o56Engine) {
	for _, m := range []string{"pump", "hold", "silent"} {
		c.Routes = append(c.Routes, Route{Model: m, Upstreams: []string{e.srv.URL + "/v1"}})
		c.Models.(records)[m] = modelrec.Attrs{Classification: "public"}
	}
}

// o56Post sends one request with its own connection and returns the status and body.
func o56Post(url, key, body string) (int, []byte, error) {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 60 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// o56CutStream sends a streamed chat request on a raw TCP connection, reads until the
// first content event has arrived, then resets the connection (SO_LINGER 0: a client
// killed, or a client that drops the stream). It returns the content bytes it saw.
func o56CutStream(t *testing.T, addr, key, model string, promptBytes int) int {
	t.Helper()
	body := `{"model":"` + model + `","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"` + strings.Repeat("p", promptBytes) + `"}]}`
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", key, len(body), body)
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, " 200 ") {
		t.Fatalf("stream request: %q %v", status, err)
	}
	var seen bytes.Buffer
	buf := make([]byte, 4096)
	for !bytes.Contains(seen.Bytes(), []byte(o56Content)) {
		n, err := br.Read(buf)
		seen.Write(buf[:n])
		if err != nil {
			t.Fatalf("stream ended before any content: %v (%q)", err, seen.String())
		}
	}
	conn.(*net.TCPConn).SetLinger(0)
	return bytes.Count(seen.Bytes(), []byte(o56Content)) * len(o56Content)
}

// Attack: a client streams a chat answer, takes the first events and resets its connection
// while the engine is still generating — before the usage event, which OpenAI-style engines
// send last. Five times.
// Rule (DESIGN, the request's path): tokens are "usage from the upstream's usage block,
// else estimated"; a request that was streamed content is charged at least the content it
// was given (here ≥ 24 tokens: one 96-byte event at the gateway's own 4 bytes a token) and
// its prompt.
// What it shows (FAIL): in 5 of 5 cut streams (4 of 5 in another run; the fifth was charged
// 133 790 by the other path, the estimate of what was relayed) the release reported 0
// tokens (admitted on an estimate of 1 012, all refunded) though the client had received content and the engine
// had generated far more: stream() returns at the failed w.Write ("client went away
// mid-stream") before the `st.usage == (Usage{})` estimate, and ServeHTTP calls
// done(st.usage.PromptTokens + st.usage.CompletionTokens) = done(0). A key can so draw
// output at no tpm or daily_tokens cost at all (only rpm bounds it).
// Fixed since: with no usage known, a request whose client went away or whose stream was
// cut is charged the admission's estimate (reqState.charged).
func TestOutside56CutStreamChargesNothing(t *testing.T) {
	_, lim, f := o56Charging(t)
	addr := strings.TrimPrefix(f.srv.URL, "http://")
	zero := 0
	var got []o56Settled
	for range 5 {
		content := o56CutStream(t, addr, f.alice, "pump", 16)
		s := lim.next(t)
		got = append(got, s)
		if s.actual < estimateTokens(content) || s.actual == 0 {
			zero++
		}
	}
	t.Logf("cut streams (estimate, charged): %v", got)
	if zero > 0 {
		t.Fatalf("%d of 5 streams cut by the client after content was relayed were charged less than that content (estimate, charged: %v)", zero, got)
	}
}

// o56Charging is a gateway on the round's engine whose (local) limiter reports what each
// request was charged.
func o56Charging(t *testing.T) (*o56Engine, *o56Limiter, *fixture) {
	e := newO56Engine(t)
	lim := newO56Limiter(limits.NewLocal(nil))
	f := newFixture(t, func(c *Config) {
		o56Routes(c, e)
		c.Limiter = lim
	})
	return e, lim, f
}

// Attack: a client sends a large prompt (8 000 bytes) and hangs up once the engine has
// received it, before the engine answers.
// Rule: a request the engine received is charged at least the estimate of its prompt (the
// engine prefilled it); "usage from the upstream's usage block, else estimated".
// What it shows (FAIL): the release reported 0 tokens for an 8 030-byte prompt (admitted
// on an estimate of 3 008, the prompt's share 2 008; all refunded): proxy's `r.Context().Err() != nil` branch sets 499 and leaves st.usage
// zero, so ServeHTTP calls done(0); prompts can be pushed to the engine without tpm or
// daily_tokens ever being charged.
// Fixed since: reqState.charged (as above).
func TestOutside56HangUpBeforeAnswerChargesNothing(t *testing.T) {
	e, lim, f := o56Charging(t)
	prompt := `[{"role":"user","content":"` + strings.Repeat("p", 8000) + `"}]`
	body := `{"model":"silent","max_tokens":1000,"messages":` + prompt + `}`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.srv.URL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	req.Header.Set("Content-Type", "application/json")
	errc := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	select {
	case <-e.arrived:
	case <-time.After(60 * time.Second):
		t.Fatal("the engine did not receive the request within 60 s")
	}
	cancel()
	<-errc
	s := lim.next(t)
	if min := estimateTokens(len(prompt)); s.actual < min {
		t.Fatalf("a request whose %d-byte prompt reached the engine was charged %d tokens (admitted on %d; at least the prompt's estimate %d expected)", len(prompt), s.actual, s.est, min)
	}
}

// Attack: a key with daily_tokens 1000 sends a completions request whose prompt is 3 000
// bytes and max_tokens 1 to the reference runtime (its bigram model: one token a byte). The
// gateway estimates prompts at 4 bytes a token, so the request is admitted on ~752.
// Rule: daily_tokens bounds the tokens a key is served in a UTC day; the limiter admits on
// an estimate of what the request may cost ("max_tokens × max(n, best_of) (plus the
// prompt)").
// What it shows (FAIL): one request was admitted on an estimate of 752 and served 3 001
// tokens (usage from the engine) against a daily budget of 1 000 — 3× the budget; with k
// such requests in flight at once, up to k × 3 001. The prompt part of the estimate
// (estimateTokens(len(prompt)), usage.go: 4 bytes a token) is below what the engine counts
// for byte-level or non-Latin text, and the budget check (dt + est > daily) only ever sees the
// estimate.
// Not fixed (a RESIDUAL, in DESIGN): budgets are checked against the estimate and charged
// the engine's usage afterwards, so one request — or each of those in flight together — can
// go past the budget by what the estimate missed; an upper bound (a token a prompt byte)
// would hold four times the usual prompt's tokens of every tpm bucket while a request runs.
// Held since: once past, the key is refused (no second request served), asserted below.
func TestOutside56PromptUnderestimateOverrunsDailyBudget(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.KeyLimits = limits.Limits{DailyTokens: 1000} })
	body := `{"model":"demo","max_tokens":1,"prompt":"` + strings.Repeat("a", 3000) + `"}`
	served, overBefore := 0, false
	for range 4 {
		code, b, err := o56Post(f.srv.URL+"/v1/completions", f.alice, body)
		if err != nil {
			t.Fatal(err)
		}
		if code == 429 {
			break
		}
		if overBefore {
			t.Fatalf("a key already served %d tokens against daily_tokens 1000 was served again", served)
		}
		if code != 200 {
			t.Fatalf("status %d: %s", code, b)
		}
		var a struct {
			Usage struct {
				TotalTokens int `json:"total_tokens"`
			} `json:"usage"`
		}
		json.Unmarshal(b, &a)
		served += a.Usage.TotalTokens
		overBefore = served > 1000
	}
	if served > 1000 {
		t.Logf("RESIDUAL: a key with daily_tokens 1000 was served %d tokens (the engine's usage) in one day, by one request admitted on its estimate", served)
	}
}

// Attack: two users of different tenants sign in with the identity provider (JWT bearer
// tokens, gateway.oidc) instead of API keys. One of them uses up gateway.key_limits.
// Rule: key_limits are per credential (DESIGN: "per API key"); one principal's use must
// not refuse another principal of another tenant (tenant_limits are per tenant).
// What it shows (FAIL): after fed-a (tenant acme) made its 2 requests of key_limits rpm 2,
// fed-b (tenant globex, never seen before) was refused with 429 on its first request:
// authn/oidc.go gives every JWT principal KeyID "jwt", so all of them share one scope
// "key:jwt" (gateway.go: `{Name: "key:" + p.KeyID, ...}`) — every federated user of every
// tenant shares one key budget, and any one of them can lock all the others out.
// Fixed since: a JWT principal's key scope is its own, "key:jwt:ID" (authn/oidc.go).
func TestOutside56JWTUsersShareOneKeyScope(t *testing.T) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	o := testOIDC(t, priv, store.Principal{ID: "fed-a", Tenant: "acme", Screening: "clear"},
		store.Principal{ID: "fed-b", Tenant: "globex", Screening: "clear"})
	f := newFixture(t, func(c *Config) {
		c.Auth = authn.Chain{Keys: c.Auth.(*authn.Keys), OIDC: o}
		c.KeyLimits = limits.Limits{RPM: 2}
	})
	token := func(sub string) string { return testJWT(t, priv, sub, time.Now().Add(time.Hour)) }
	url := f.srv.URL + "/v1/chat/completions"
	body := `{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`
	a, b := token("fed-a"), token("fed-b")
	for i := range 2 {
		if code, m, err := o56Post(url, a, body); err != nil || code != 200 {
			t.Fatalf("premise: fed-a's request %d: %d %s %v", i+1, code, m, err)
		}
	}
	if code, _, _ := o56Post(url, a, body); code != 429 {
		t.Fatalf("premise: fed-a's third request under rpm 2: %d, want 429", code)
	}
	if code, m, err := o56Post(url, b, body); err != nil || code != 200 {
		t.Fatalf("fed-b (tenant globex), first request of its own: %d %s %v — refused because fed-a (tenant acme) used up the key limit", code, m, err)
	}
}

// o56Redis is a client of the Redis scripts/test started.
func o56Redis(t *testing.T) *redis.Client { return testenv.Redis(t) }

// o56Fleet starts two gateway replicas that share one Redis limiter prefix (each its own
// limits.Redis, connection pool and heartbeat), with the fake engine's routes.
func o56Fleet(t *testing.T, e *o56Engine, tenant limits.Limits) [2]*fixture {
	prefix := fmt.Sprintf("o56:%d:", time.Now().UnixNano())
	ctx, cancel := context.WithCancel(context.Background())
	var runs sync.WaitGroup
	t.Cleanup(func() { cancel(); runs.Wait() })
	var fleet [2]*fixture
	for i := range fleet {
		rl := limits.NewRedis(o56Redis(t), prefix, nil)
		runs.Go(func() { rl.Run(ctx) })
		fleet[i] = newFixture(t, func(c *Config) {
			o56Routes(c, e)
			c.Limiter = rl
			c.TenantLimits = tenant
		})
	}
	return fleet
}

// Attack: 12 clients, each on its own connection, half to each of two replicas, send at
// once a request for an engine that holds its answer, under tenant_limits concurrent 2 (alice
// of tenant acme on both replicas).
// Rule: concurrency holds globally across replicas: at most 2 at the engine at once, the
// rest 429; once they are answered the slots are free again.
// What it shows: HELD (the engine saw at most 2 at once; 10 of 12 were refused with 429;
// afterwards a request was served on each replica).
func TestOutside56FleetConcurrencyOverHTTP(t *testing.T) {
	e := newO56Engine(t)
	fleet := o56Fleet(t, e, limits.Limits{Concurrent: 2})
	body := `{"model":"hold","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`
	type result struct {
		code int
		err  error
	}
	results := make(chan result, 12)
	var wg sync.WaitGroup
	defer wg.Wait()
	released := false
	defer func() {
		if !released {
			close(e.release)
		}
	}()
	for i := range 12 {
		f := fleet[i%2]
		wg.Go(func() {
			code, _, err := o56Post(f.srv.URL+"/v1/chat/completions", f.alice, body)
			results <- result{code, err}
		})
	}
	// Wait until every request is either at the engine or answered.
	refused, arrivedN := 0, 0
	deadline := time.After(60 * time.Second)
	for refused+arrivedN < 12 {
		select {
		case <-e.arrived:
			arrivedN++
		case r := <-results:
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.code != 429 {
				t.Fatalf("a request was answered %d before the engine released any", r.code)
			}
			refused++
		case <-deadline:
			t.Fatalf("after 60 s: %d at the engine, %d refused of 12", arrivedN, refused)
		}
	}
	close(e.release)
	released = true
	for range arrivedN {
		if r := <-results; r.err != nil || r.code != 200 {
			t.Fatalf("held request: %d %v", r.code, r.err)
		}
	}
	t.Logf("engine max in flight %d; refused %d of 12", e.maxSeen.Load(), refused)
	if e.maxSeen.Load() > 2 || arrivedN > 2 {
		t.Fatalf("%d requests reached the engine (at most %d at once) under a fleet-wide concurrency limit of 2", arrivedN, e.maxSeen.Load())
	}
	for i, f := range fleet {
		if code, b, err := o56Post(f.srv.URL+"/v1/chat/completions", f.alice, body); err != nil || code != 200 {
			t.Fatalf("replica %d after the release: %d %s %v (slots not freed)", i, code, b, err)
		}
		<-e.arrived
	}
}

// Attack: 8 goroutines, each with its own connections, split over two replicas, send 48
// requests as fast as they can under tenant_limits rpm 10.
// Rule: rpm holds globally across replicas (10 a minute; at most one more refilled while
// the test runs).
// What it shows: HELD (10 of 48 admitted).
func TestOutside56FleetRPMOverHTTP(t *testing.T) {
	e := newO56Engine(t)
	close(e.release) // "hold" answers at once
	fleet := o56Fleet(t, e, limits.Limits{RPM: 10})
	body := `{"model":"hold","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		f := fleet[g%2]
		wg.Go(func() {
			for range 6 {
				code, b, err := o56Post(f.srv.URL+"/v1/chat/completions", f.alice, body)
				switch {
				case err != nil:
					t.Error(err)
					return
				case code == 200:
					ok.Add(1)
				case code == 429:
					refused.Add(1)
				default:
					t.Errorf("status %d: %s", code, b)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("admitted %d, refused %d of 48", ok.Load(), refused.Load())
	if n := ok.Load(); n < 10 || n > 11 {
		t.Fatalf("two replicas admitted %d requests under a fleet-wide rpm of 10", n)
	}
}

// Attack: Redis is down (the shared limiter's every call fails) while a client asks for a
// restricted model and for a public one, with gateway.local_fallback_public on.
// Rule (DESIGN): "Redis down: local fallback for public models only, 503 for the rest";
// the fallback still enforces the limits (key rpm 3).
// What it shows: HELD (restricted: 503 limits_unavailable; public: 3 served, then 429).
func TestOutside56RedisDownFallback(t *testing.T) {
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer dead.Close()
	f := newFixture(t, func(c *Config) {
		c.Limiter = limits.NewRedis(dead, "o56:", nil)
		c.FallbackLimiter = limits.NewLocal(nil)
		c.KeyLimits = limits.Limits{RPM: 3}
	})
	url := f.srv.URL + "/v1/chat/completions"
	for range 2 {
		code, b, err := o56Post(url, f.alice, `{"model":"frontier","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`)
		if err != nil || code != 503 || !bytes.Contains(b, []byte("limits_unavailable")) {
			t.Fatalf("restricted model with Redis down: %d %s %v, want 503 limits_unavailable", code, b, err)
		}
	}
	var codes []int
	for range 5 {
		code, _, err := o56Post(url, f.alice, `{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`)
		if err != nil {
			t.Fatal(err)
		}
		codes = append(codes, code)
	}
	want := []int{200, 200, 200, 429, 429}
	if fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Fatalf("public model with Redis down under key rpm 3: %v, want %v", codes, want)
	}
}

// Attack: three streams are cut by the client (connection reset mid-stream) under key
// concurrent 1; then a stream is held open and a second request sent beside it.
// Rule: a cut stream's slot is freed exactly once: the held stream has the only slot (the
// second request is 429 — no slot freed twice, no count gone negative), and once it ends
// the slot is free again (none leaked).
// What it shows: HELD (second request 429 while the stream was held; 200 after).
func TestOutside56CutStreamSlotFreedOnce(t *testing.T) {
	e := newO56Engine(t)
	f := newFixture(t, func(c *Config) {
		o56Routes(c, e)
		c.KeyLimits = limits.Limits{Concurrent: 1}
	})
	addr := strings.TrimPrefix(f.srv.URL, "http://")
	url := f.srv.URL + "/v1/chat/completions"
	short := `{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`
	for i := range 3 {
		o56CutStream(t, addr, f.alice, "pump", 16)
		<-e.arrived
		// Wait (60 s at most) until the cut request has given its slot back.
		deadline := time.Now().Add(60 * time.Second)
		for {
			code, b, err := o56Post(url, f.alice, short)
			if err != nil {
				t.Fatal(err)
			}
			if code == 200 {
				break
			}
			if code != 429 || time.Now().After(deadline) {
				t.Fatalf("after cut stream %d: %d %s", i+1, code, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Hold one stream open; a second request must find no slot.
	held := make(chan error, 1)
	go func() {
		code, b, err := o56Post(url, f.alice, `{"model":"hold","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`)
		if err == nil && code != 200 {
			err = fmt.Errorf("held stream: %d %s", code, b)
		}
		held <- err
	}()
	select {
	case <-e.arrived:
	case <-time.After(60 * time.Second):
		close(e.release)
		t.Fatal("the held stream did not reach the engine within 60 s")
	}
	code, _, err := o56Post(url, f.alice, short)
	close(e.release)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if code != 429 {
		t.Fatalf("a second request beside a held stream under concurrent 1 was answered %d (a cut stream's slot was freed twice)", code)
	}
	if code, b, err := o56Post(url, f.alice, short); err != nil || code != 200 {
		t.Fatalf("after the held stream ended: %d %s %v (slot leaked)", code, b, err)
	}
}

// Attack: max_tokens, max_completion_tokens and n written in odd forms (exponents, floats,
// strings, negatives, out of range, null, zero, duplicated, case or escape variants, both
// fields disagreeing) to get admitted on a small estimate and generate more.
// Rule: a body is refused (400) or admitted on an estimate whose generation part
// (estimate − the prompt's) covers every completion token the engine (the reference
// runtime) then generates.
// What it shows: HELD (exponents, floats, strings, negatives, −0, 01, ≥ 2^31, duplicates,
// "Max_Tokens", "max\u005ftokens", "N", "n":1e0 refused 400 before the limiter; "n":0
// admitted and refused by the engine; every other variant's generation estimate ≥ the
// completion: e.g. max_completion_tokens 1 + max_tokens 50 → 1/1, max_completion_tokens 0
// → 4 096/4 096, 2147483647 → 4 096/4 096, n 3 × 20 → 60/60, n 2 best_of 3 → 60/40).
func TestOutside56OddTokenFieldsNeverUnderEstimate(t *testing.T) {
	lim := newO56Limiter(limits.NewLocal(nil))
	f := newFixture(t, func(c *Config) { c.Limiter = lim })
	msgs := `[{"role":"user","content":"hi"}]`
	seen := int64(0)
	for _, fields := range []string{
		`"max_tokens":1e3`, `"max_tokens":-1`, `"max_tokens":1.0`, `"max_tokens":"50"`, `"max_tokens":99999999999`,
		`"max_tokens":2147483647`, `"max_tokens":2147483648`, `"max_tokens":1,"max_tokens":50`, `"max_tokens":1,"Max_Tokens":50`,
		`"max_tokens":1,"max\u005ftokens":50`, `"max_completion_tokens":1,"max_tokens":50`, `"max_completion_tokens":50,"max_tokens":1`,
		`"max_completion_tokens":0,"max_tokens":50`, `"max_completion_tokens":null,"max_tokens":50`, `"max_tokens":null`,
		`"max_tokens":0`, `"n":3,"max_tokens":20`, `"n":3,"max_completion_tokens":20,"max_tokens":1`, `"n":1e0,"max_tokens":20`,
		`"n":0,"max_tokens":20`, `"n":null,"max_tokens":20`, `"N":3,"max_tokens":20`, `"max_tokens":20,"n":2,"best_of":3`,
		`"max_tokens":-0`, `"max_tokens":01`, `"max_tokens":20}`,
	} {
		body := `{"model":"demo",` + fields + `,"messages":` + msgs + `}`
		if strings.HasSuffix(fields, "}") {
			body = `{"model":"demo","messages":` + msgs + `,` + fields
		}
		code, b, err := o56Post(f.srv.URL+"/v1/chat/completions", f.alice, body)
		if err != nil {
			t.Fatal(err)
		}
		// An admitted request was counted before its answer was written: one refused
		// before the limiter (400 from the gateway) was not, one the engine refused was.
		admitted := lim.admitted.Load() > seen
		if admitted {
			seen++
		}
		if code != 200 {
			if admitted {
				lim.next(t)
			}
			if code != 400 {
				t.Fatalf("%s: %d %s", fields, code, b)
			}
			t.Logf("%s: %d (admitted: %v)", fields, code, admitted)
			continue
		}
		var a struct {
			Usage struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		json.Unmarshal(b, &a)
		s := lim.next(t)
		gen := s.est - estimateTokens(len(msgs))
		t.Logf("%s: estimate %d (generation %d), completion %d", fields, s.est, gen, a.Usage.CompletionTokens)
		if gen < a.Usage.CompletionTokens {
			t.Errorf("%s: admitted on a generation estimate of %d, the engine generated %d tokens", fields, gen, a.Usage.CompletionTokens)
		}
	}
}

// testOIDC is a JWT verifier for the issuer "https://idp.test" and audience "strongroom",
// whose JWKS serves priv's public key as "k1", over a store that holds principals.
func testOIDC(t *testing.T, priv *ecdsa.PrivateKey, principals ...store.Principal) *authn.OIDC {
	t.Helper()
	ctx := context.Background()
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &priv.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	}))
	t.Cleanup(jwks.Close)
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "oidc.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, p := range principals {
		st.PutPrincipal(ctx, p)
	}
	o, err := authn.NewOIDC(ctx, authn.OIDCConfig{Issuer: "https://idp.test", Audience: "strongroom", JWKSURL: jwks.URL}, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// testJWT is a token for testOIDC's issuer and audience, signed by key as "k1", for sub,
// expiring at exp (issued two hours before).
func testJWT(t *testing.T, key *ecdsa.PrivateKey, sub string, exp time.Time) string {
	t.Helper()
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: "https://idp.test", Audience: jwt.Audience{"strongroom"}, Subject: sub,
		IssuedAt: jwt.NewNumericDate(exp.Add(-2 * time.Hour)), Expiry: jwt.NewNumericDate(exp)}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
