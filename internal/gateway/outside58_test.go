package gateway

// Outside round 58: users' secrets and content — prompts and message contents (content,
// a message's name, tool arguments, tool results, tool descriptions, member names of the
// JSON objects callers send), completions, API key secrets and bearer tokens (unknown,
// wrong, revoked, expired, malformed), JWTs — must not get out of the gateway to anyone
// but their owner: not to the operator's log collector (the gateway's log at debug level,
// what `serve -v` writes), not to the transparency log (/log/, `audit search`), not to a
// metrics scraper (/metrics), not to the trace collector (OTLP spans), not to another
// caller's answer. Prompts may appear only as the log's keyed digests.
//
// Every request goes to the gateway over TCP as raw bytes (net/http client), with one
// marker of its own for each secret it carries; after the server closed and the log
// flushed, every channel is searched for every marker (raw, JSON-escaped, percent-encoded,
// base64 at each alignment), each failure naming the channel, the request that carried the
// secret, and the text around it with the secret masked.
//
// Found (each fails while it lasts: subtests duplicate_member_name_in_a_message,
// case-variant_member_names_in_metadata, syntax_error_under_a_caller-named_member,
// lone_surrogate_before_secret_content):
// a body the strict parser refuses is recorded — with the parser's error as the record's
// reason — in the caller's request record, which goes to the transparency log, and is logged
// at info ("request denied", `serve -v`). The parser's errors quote caller content:
// jsontext's duplicate-name error and the gateway's own fold check quote the member name
// (request.go foldSet.with: `duplicate field %q`), jsontext's syntax errors carry a JSON
// pointer made of the member names above the error ("within /tools/0/function/parameters/
// properties/<name>"), and an invalid surrogate escape is quoted with the 6 bytes that
// follow it (`invalid surrogate pair \ud800XXXXXX`). Built at gateway.go infer:
// `st.fail(w, badRequest("Invalid request body: "+err.Error()+"."), err.Error())`, written
// by appendRecord ("reason") and finish (`g.log.Info("request denied", …, "reason", …)`).

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// o58Engine is an OpenAI-compatible engine whose answers carry completion markers, and
// which, asked to, fails the way real engines do: a 400 or 500 whose text quotes the
// request (vLLM's validation errors quote the messages).
func o58Engine(t *testing.T) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req struct {
			Stream bool `json:"stream"`
		}
		json.Unmarshal(b, &req)
		compl := o58Completion(string(b))
		switch {
		case bytes.Contains(b, []byte("ENGINE_400")):
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			q, _ := json.Marshal("invalid request: " + string(b))
			fmt.Fprintf(w, `{"object":"error","message":%s,"type":"BadRequestError","code":400}`, q)
		case bytes.Contains(b, []byte("ENGINE_500")):
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "Traceback (most recent call last): engine crashed on request %s\n", b)
		case req.Stream:
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"echo\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"%s\"}}]}\n\n", compl)
			fmt.Fprint(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"echo\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":4,\"total_tokens\":9}}\n\n")
			fmt.Fprint(w, "data: [DONE]\n\n")
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id":"c2","object":"chat.completion","created":0,"model":"echo","choices":[{"index":0,"message":{"role":"assistant","content":"%s"},"text":"%s","finish_reason":"stop"}],"data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}`, compl, compl)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// o58Completion is the completion o58Engine answers a request body with: "CMPL58" and the
// body's first marker (a word with "Marker58" in it) reversed, so that each request's
// completion is its own and holds none of its prompt's markers.
func o58Completion(body string) string {
	m := regexp.MustCompile(`[A-Za-z0-9]*Marker58[A-Za-z0-9]*`).FindString(body)
	r := []byte(m)
	slices.Reverse(r)
	return "CMPL58" + string(r)
}

// o58Pad makes a well-formed API key secret (43 base64url characters, the last one's
// spare bits zero) that starts with marker.
func o58Pad(marker string) string { return marker + strings.Repeat("A", 43-len(marker)) }

// TestOutside58GatewayChannels drives every kind of request at a gateway whose log is at
// debug level, with tracing on, then searches every channel for every secret.
func TestOutside58GatewayChannels(t *testing.T) {
	ctx := context.Background()
	engine := o58Engine(t)

	// JWT principals (gateway.oidc), as outside round 56 set them up.
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	o := testOIDC(t, priv, store.Principal{ID: "fed-a", Tenant: "acme", Screening: "clear"})
	jwtOf := func(key *ecdsa.PrivateKey, sub string, exp time.Time) string { return testJWT(t, key, sub, exp) }

	var logBuf testenv.LogBuffer
	spans := tracetest.NewSpanRecorder()
	det := &captureDetector{} // the detectors' inputs (prompts they need; the model's name they keep)
	f := newFixture(t, func(c *Config) {
		c.Auth = authn.Chain{Keys: c.Auth.(*authn.Keys), OIDC: o}
		c.Logger = slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.Tracer = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)).Tracer("o58")
		c.MaxBody = 64 << 10
		c.Detector = det
		c.Routes = append(c.Routes,
			Route{Model: "echo", Upstreams: []string{engine.URL + "/v1"}},
			Route{Model: "tight", Upstreams: []string{engine.URL + "/v1"}, Limits: limits.Limits{RPM: 1}},
			Route{Model: "down", Upstreams: []string{"http://127.0.0.1:1/v1"}})
		recs := c.Models.(records)
		for _, m := range []string{"echo", "tight", "down"} {
			recs[m] = modelrec.Attrs{Classification: "public"}
		}
	})
	keys := authn.NewKeys(f.st, nil, time.Second)
	revoked, rk, _ := keys.Create(ctx, "alice", 0, nil)
	if err := keys.Revoke(ctx, rk.ID); err != nil {
		t.Fatal(err)
	}
	expired, _, _ := keys.Create(ctx, "alice", time.Nanosecond, nil)
	aliceID, _, _ := strings.Cut(strings.TrimPrefix(f.alice, "sr_"), ".")
	secretOf := func(tok string) string { _, s, _ := strings.Cut(tok, "."); return s }
	jwtOK := jwtOf(priv, "fed-a", time.Now().Add(time.Hour))
	jwtExpired := jwtOf(priv, "fed-a", time.Now().Add(-time.Hour))
	jwtUnknown := jwtOf(priv, "fed-nobody", time.Now().Add(time.Hour))
	jwtForged := jwtOf(other, "fed-a", time.Now().Add(time.Hour))
	sigOf := func(tok string) string { return tok[strings.LastIndexByte(tok, '.')+1:] }

	// Secrets that belong to no one request: they must be nowhere.
	ambient := []testenv.Secret{
		{Text: f.alice[len("sr_")+len(aliceID)+1:], Kind: "alice's valid API key secret"},
		{Text: f.bob[strings.IndexByte(f.bob, '.')+1:], Kind: "bob's valid API key secret"},
		{Text: engineKey, Kind: "the routes' upstream key"},
	}

	chat := func(model, extra string, msgs string) string {
		return `{"model":"` + model + `","max_tokens":4` + extra + `,"messages":` + msgs + `}`
	}
	user := func(content string) string { return `[{"role":"user","content":"` + content + `"}]` }
	plain := chat("echo", "", user("hello"))
	type req struct {
		name, method, path, key, body string
		secrets                       []testenv.Secret
		want                          int // the status the request must get (the premise), 0: any
	}
	S := func(text, kind string) testenv.Secret { return testenv.Secret{Text: text, Kind: kind} }
	reqs := []req{
		// Served requests: the prompt in every place a chat body carries content.
		{name: "chat served", path: "/v1/chat/completions", key: f.alice, want: 200, body: `{"model":"echo","max_tokens":4,"messages":[` +
			`{"role":"system","content":"SysPromptMarker58ok"},` +
			`{"role":"user","name":"NameFieldMarker58ok","content":[{"type":"text","text":"PromptMarker58ok"}]},` +
			`{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"ToolArgMarker58ok\"}"}}]},` +
			`{"role":"tool","tool_call_id":"call_1","content":"ToolResultMarker58ok"}],` +
			`"tools":[{"type":"function","function":{"name":"lookup","description":"ToolDescMarker58ok","parameters":{"type":"object","properties":{"PropNameMarker58ok":{"type":"string"}}}}}],` +
			`"user":"UserFieldMarker58ok","metadata":{"MetaKeyMarker58ok":"MetaValMarker58ok"}}`,
			secrets: []testenv.Secret{S("SysPromptMarker58ok", "a system prompt"), S("NameFieldMarker58ok", "a message's name field"),
				S("PromptMarker58ok", "a user prompt"), S("ToolArgMarker58ok", "a tool call's arguments"),
				S("ToolResultMarker58ok", "a tool result"), S("ToolDescMarker58ok", "a tool's description"),
				S("PropNameMarker58ok", "a tool parameter's name"), S("UserFieldMarker58ok", "the user field"),
				S("MetaKeyMarker58ok", "a metadata member name"), S("MetaValMarker58ok", "a metadata value"),
				S(o58Completion("SysPromptMarker58ok"), "the engine's completion")}},
		{name: "chat stream served", path: "/v1/chat/completions", key: f.alice, want: 200,
			body:    chat("echo", `,"stream":true`, user("StreamPromptMarker58")),
			secrets: []testenv.Secret{S("StreamPromptMarker58", "a streamed request's prompt"), S(o58Completion("StreamPromptMarker58"), "a streamed completion")}},
		{name: "completions served", path: "/v1/completions", key: f.alice, want: 200,
			body: `{"model":"echo","max_tokens":4,"prompt":["LegacyPromptMarker58"]}`, secrets: []testenv.Secret{S("LegacyPromptMarker58", "a completions prompt"), S(o58Completion("LegacyPromptMarker58"), "a completions endpoint's completion")}},
		{name: "embeddings served", path: "/v1/embeddings", key: f.alice, want: 200,
			body: `{"model":"echo","input":"EmbedInputMarker58"}`, secrets: []testenv.Secret{S("EmbedInputMarker58", "an embeddings input"), S(o58Completion("EmbedInputMarker58"), "an embeddings answer")}},
		{name: "chat served to a JWT", path: "/v1/chat/completions", key: jwtOK, want: 200, body: chat("echo", "", user("JwtPromptMarker58")),
			secrets: []testenv.Secret{S(jwtOK, "a valid JWT"), S(sigOf(jwtOK), "a valid JWT's signature"), S("JwtPromptMarker58", "a JWT caller's prompt"),
				S(o58Completion("JwtPromptMarker58"), "a JWT caller's completion")}},

		// Bodies the strict parser refuses.
		{name: "duplicate member name in a message", path: "/v1/chat/completions", key: f.alice, want: 400,
			body:    chat("echo", "", `[{"role":"user","content":"hi","DupNameMarker58":1,"DupNameMarker58":2}]`),
			secrets: []testenv.Secret{S("DupNameMarker58", "a member name the caller wrote twice in a message")}},
		{name: "case-variant member names in metadata", path: "/v1/chat/completions", key: f.alice, want: 400,
			body:    chat("echo", `,"metadata":{"foldnamemarker58":"a","FoldNameMarker58":"b"}`, user("hi")),
			secrets: []testenv.Secret{S("FoldNameMarker58", "a metadata member name differing from another only in case")}},
		{name: "syntax error under a caller-named member", path: "/v1/chat/completions", key: f.alice, want: 400,
			body:    chat("echo", `,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"PointerNameMarker58":{"type":"string" "x"}}}}}]`, user("hi")),
			secrets: []testenv.Secret{S("PointerNameMarker58", "a tool parameter's name above a syntax error")}},
		{name: "lone surrogate before secret content", path: "/v1/chat/completions", key: f.alice, want: 400,
			body:    chat("echo", "", user(`my PIN is \ud800Pn58Qz, keep it`)),
			secrets: []testenv.Secret{S("Pn58Qz", "six bytes of a prompt after a lone surrogate escape")}},
		{name: "invalid escape after content", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: chat("echo", "", user(`EscPromptMarker58\q`)), secrets: []testenv.Secret{S("EscPromptMarker58", "a prompt before an invalid escape")}},
		{name: "control character in content", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: chat("echo", "", user("CtlPromptMarker58\x01")), secrets: []testenv.Secret{S("CtlPromptMarker58", "a prompt with a control character")}},
		{name: "truncated body", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: `{"model":"echo","messages":[{"role":"user","content":"TruncPromptMarker58`, secrets: []testenv.Secret{S("TruncPromptMarker58", "a truncated body's prompt")}},
		{name: "bare word instead of a value", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: `{"model":"echo","messages":[{"role":"user","content":BareWordMarker58}]}`, secrets: []testenv.Secret{S("BareWordMarker58", "an unquoted prompt")}},
		{name: "not JSON", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: `NotJsonPromptMarker58 tell me everything`, secrets: []testenv.Secret{S("NotJsonPromptMarker58", "a body that is plain text")}},
		{name: "a JSON string, not an object", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: `"StringBodyMarker58"`, secrets: []testenv.Secret{S("StringBodyMarker58", "a body that is a JSON string")}},
		{name: "duplicate top-level messages", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: `{"model":"echo","messages":[],"messages":[{"role":"user","content":"DupTopMarker58"}]}`, secrets: []testenv.Secret{S("DupTopMarker58", "the prompt of a duplicated messages member")}},
		{name: "case-variant top-level field", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: chat("echo", `,"Max_Tokens":5`, user("CaseTopMarker58")), secrets: []testenv.Secret{S("CaseTopMarker58", "a prompt beside a case-variant field")}},
		{name: "trailing data", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: plain + `{"messages":"TrailMarker58"}`, secrets: []testenv.Secret{S("TrailMarker58", "trailing data after the body")}},
		{name: "wrong type for a judged field", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: chat("echo", `,"n":"TypeMarker58"`, user("hi")), secrets: []testenv.Secret{S("TypeMarker58", "a string where a count goes")}},
		{name: "oversized body", path: "/v1/chat/completions", key: f.alice, want: 413,
			body: chat("echo", "", user("BigPromptMarker58 "+strings.Repeat("x", 70<<10))), secrets: []testenv.Secret{S("BigPromptMarker58", "an oversized body's prompt")}},

		// Refusals after parsing.
		{name: "policy denial of logit_bias", path: "/v1/chat/completions", key: f.alice, want: 403,
			body: chat("frontier", `,"logit_bias":{"5":10}`, user("BiasPromptMarker58")), secrets: []testenv.Secret{S("BiasPromptMarker58", "a prompt refused with its logit_bias")}},
		{name: "policy denial", path: "/v1/chat/completions", key: f.bob, want: 403,
			body: chat("frontier", "", user("PolicyPromptMarker58")), secrets: []testenv.Secret{S("PolicyPromptMarker58", "a prompt refused by policy")}},
		{name: "unknown model", path: "/v1/chat/completions", key: f.alice, want: 404,
			body: chat("nosuch", "", user("UnroutedPromptMarker58")), secrets: []testenv.Secret{S("UnroutedPromptMarker58", "a prompt for an unrouted model")}},
		// Round 59: the model's name is the caller's text where no route has it.
		{name: "a model name the gateway does not route", path: "/v1/chat/completions", key: f.alice, want: 404,
			body: chat("ModelNameMarker59", "", user("hello")), secrets: []testenv.Secret{S("ModelNameMarker59", "a caller-chosen model name")}},
		{name: "a model name with logit_bias and logprobs", path: "/v1/chat/completions", key: f.alice, want: 404,
			body: chat("BiasModelMarker59", `,"logprobs":true,"logit_bias":{"5":10,"6":-10}`, user("hello")), secrets: []testenv.Secret{S("BiasModelMarker59", "a caller-chosen model name with a logit sweep")}},
		{name: "rate limit, admitted", path: "/v1/chat/completions", key: f.alice, want: 200,
			body: chat("tight", "", user("RateOkMarker58")), secrets: []testenv.Secret{S("RateOkMarker58", "a prompt just under a rate limit"), S(o58Completion("RateOkMarker58"), "a completion under a rate limit")}},
		{name: "rate limit, refused", path: "/v1/chat/completions", key: f.alice, want: 429,
			body: chat("tight", "", user("RateLimitedMarker58")), secrets: []testenv.Secret{S("RateLimitedMarker58", "a rate-limited prompt")}},

		// Engine failures.
		{name: "engine 400 quoting the request", path: "/v1/chat/completions", key: f.alice, want: 400,
			body: chat("echo", "", user("ENGINE_400 Engine400Marker58")), secrets: []testenv.Secret{S("Engine400Marker58", "a prompt an engine's 400 quotes")}},
		{name: "engine 500 quoting the request", path: "/v1/chat/completions", key: f.alice, want: 500,
			body: chat("echo", "", user("ENGINE_500 Engine500Marker58")), secrets: []testenv.Secret{S("Engine500Marker58", "a prompt an engine's 500 quotes")}},
		{name: "engine unreachable", path: "/v1/chat/completions", key: f.alice, want: 502,
			body: chat("down", "", user("DownPromptMarker58")), secrets: []testenv.Secret{S("DownPromptMarker58", "a prompt for an engine that is down")}},

		// Credentials that do not authenticate, on inference and on /v1/models.
		{name: "unknown well-formed key", path: "/v1/chat/completions", key: "sr_0123456789abcdef." + o58Pad("TokUnknownMarker58"), want: 401,
			body: chat("echo", "", user("UnauthPromptMarker58")), secrets: []testenv.Secret{S("TokUnknownMarker58", "an unknown API key's secret"), S("UnauthPromptMarker58", "an unauthenticated request's prompt")}},
		{name: "wrong secret for a real key id", path: "/v1/chat/completions", key: "sr_" + aliceID + "." + o58Pad("TokWrongMarker58"), want: 401,
			body: plain, secrets: []testenv.Secret{S("TokWrongMarker58", "a wrong secret for alice's key id")}},
		{name: "malformed key", path: "/v1/chat/completions", key: "sr_TokMalformedMarker58", want: 401,
			body: plain, secrets: []testenv.Secret{S("TokMalformedMarker58", "a malformed API key")}},
		{name: "malformed key, bad id", path: "/v1/chat/completions", key: "sr_TokBadIdMarker58x.abc", want: 401,
			body: plain, secrets: []testenv.Secret{S("TokBadIdMarker58x", "a malformed API key's id part")}},
		{name: "foreign token", path: "/v1/chat/completions", key: "sk-proj-TokForeignMarker58", want: 401,
			body: plain, secrets: []testenv.Secret{S("TokForeignMarker58", "another provider's key (sent to OIDC)")}},
		{name: "revoked key", path: "/v1/chat/completions", key: revoked, want: 401,
			body: plain, secrets: []testenv.Secret{S(secretOf(revoked), "a revoked key's secret")}},
		{name: "expired key", path: "/v1/chat/completions", key: expired, want: 401,
			body: plain, secrets: []testenv.Secret{S(secretOf(expired), "an expired key's secret")}},
		{name: "expired JWT", path: "/v1/chat/completions", key: jwtExpired, want: 401,
			body: plain, secrets: []testenv.Secret{S(jwtExpired, "an expired JWT"), S(sigOf(jwtExpired), "an expired JWT's signature")}},
		{name: "JWT of an unregistered principal", path: "/v1/chat/completions", key: jwtUnknown, want: 401,
			body: plain, secrets: []testenv.Secret{S(jwtUnknown, "an unregistered principal's JWT"), S(sigOf(jwtUnknown), "an unregistered principal's JWT signature")}},
		{name: "forged JWT", path: "/v1/chat/completions", key: jwtForged, want: 401,
			body: plain, secrets: []testenv.Secret{S(jwtForged, "a forged JWT"), S(sigOf(jwtForged), "a forged JWT's signature")}},
		{name: "models, unknown key", method: "GET", path: "/v1/models", key: "sr_0123456789abcdef." + o58Pad("TokModelsMarker58"), want: 401,
			secrets: []testenv.Secret{S("TokModelsMarker58", "an unknown API key's secret on /v1/models")}},
		{name: "models, malformed key", method: "GET", path: "/v1/models", key: "sr_TokModelsBadMarker58", want: 401,
			secrets: []testenv.Secret{S("TokModelsBadMarker58", "a malformed API key on /v1/models")}},
		{name: "models, revoked key", method: "GET", path: "/v1/models", key: revoked, want: 401,
			secrets: []testenv.Secret{S(secretOf(revoked), "a revoked key's secret on /v1/models")}},
		{name: "models, expired JWT", method: "GET", path: "/v1/models", key: jwtExpired, want: 401,
			secrets: []testenv.Secret{S(sigOf(jwtExpired), "an expired JWT's signature on /v1/models")}},
		{name: "models, foreign token", method: "GET", path: "/v1/models", key: "sk-proj-TokModelsForeign58", want: 401,
			secrets: []testenv.Secret{S("TokModelsForeign58", "another provider's key on /v1/models")}},
		{name: "Basic credentials", path: "/v1/chat/completions", key: "basic:" + base64.StdEncoding.EncodeToString([]byte("alice:BasicPassMarker58")), want: 401,
			body: plain, secrets: []testenv.Secret{S("BasicPassMarker58", "a Basic password")}},

		// Another caller, after all of the above: its answer must hold nobody else's secret.
		{name: "bob, served", path: "/v1/chat/completions", key: f.bob, want: 200, body: chat("echo", "", user("BobPromptMarker58")),
			secrets: []testenv.Secret{S("BobPromptMarker58", "bob's prompt"), S(o58Completion("BobPromptMarker58"), "bob's completion")}},
		{name: "bob, refused body", path: "/v1/chat/completions", key: f.bob, want: 400, body: `{"model":"echo","messages":[{}`},
	}

	answers := make([]string, len(reqs))
	c := &http.Client{Timeout: 30 * time.Second}
	for i, r := range reqs {
		method := r.method
		if method == "" {
			method = http.MethodPost
		}
		hr, _ := http.NewRequest(method, f.srv.URL+r.path, strings.NewReader(r.body))
		if v, ok := strings.CutPrefix(r.key, "basic:"); ok {
			hr.Header.Set("Authorization", "Basic "+v)
		} else if r.key != "" {
			hr.Header.Set("Authorization", "Bearer "+r.key)
		}
		if r.body != "" {
			hr.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.Do(hr)
		if err != nil {
			answers[i] = "error: " + err.Error()
			t.Errorf("premise: %s: %v", r.name, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var h bytes.Buffer
		resp.Header.Write(&h)
		answers[i] = resp.Status + "\n" + h.String() + "\n" + string(b)
		if r.want != 0 && resp.StatusCode != r.want {
			t.Errorf("premise: %s: status %d, want %d: %.300s", r.name, resp.StatusCode, r.want, b)
		}
	}
	if !strings.Contains(answers[0], o58Completion("SysPromptMarker58ok")) || !strings.Contains(answers[1], o58Completion("StreamPromptMarker58")) {
		t.Errorf("premise: the engine's completions did not reach the caller: %.300s / %.300s", answers[0], answers[1])
	}

	// Everything is recorded once the handlers returned and the log closed.
	f.srv.Close()
	f.gw.FlushRefusals(ctx)
	if err := f.log.Close(ctx); err != nil {
		t.Fatal(err)
	}
	evs, err := f.st.SearchAudit(ctx, store.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) < 20 {
		t.Errorf("premise: only %d audit events recorded", len(evs))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.gw.Collector())
	mrec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(mrec, httptest.NewRequest("GET", "/metrics", nil))
	var spanText strings.Builder
	for _, s := range spans.Ended() {
		fmt.Fprintf(&spanText, "%s %v %v %v\n", s.Name(), s.Attributes(), s.Status(), s.Events())
	}
	if spanText.Len() == 0 {
		t.Errorf("premise: no spans recorded")
	}
	type channel struct{ name, text string }
	channels := []channel{
		{"the gateway's log at debug level (what `strongroom serve -v` writes to stderr)", logBuf.String()},
		{"/metrics", mrec.Body.String()},
		{"the trace spans (sent to the OTLP collector)", spanText.String()},
	}
	det.mu.Lock()
	for _, o := range det.seen {
		// The detectors keep a model's name (per-model state, an alert's evidence, the
		// shared detection bus); the prompt they need and keep only as digests.
		channels = append(channels, channel{"an observation's model name (the detectors' state and evidence)", o.Model})
	}
	det.mu.Unlock()
	for _, e := range evs {
		channels = append(channels, channel{fmt.Sprintf("audit log entry %d (kind %s: served at /log/, in `audit search --json`)", e.Index, e.Kind), string(e.Raw)})
	}
	// The log directory's files (what /log/ serves: entry bundles, tiles, batches), each
	// secret reported once, in the first file that holds it.
	var logFiles []channel
	filepath.WalkDir(f.logDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil {
			rel, _ := filepath.Rel(f.logDir, p)
			logFiles = append(logFiles, channel{"the log directory's file " + rel + " (what /log/ serves)", string(b)})
		}
		return nil
	})
	checkLogFiles := func(t *testing.T, secrets, all []testenv.Secret) {
		t.Helper()
		for _, s := range secrets {
			for _, lf := range logFiles {
				if i, _ := testenv.FindSecret(lf.text, s.Text); i >= 0 {
					testenv.CheckNoSecrets(t, lf.name, lf.text, []testenv.Secret{s}, all)
					break
				}
			}
		}
	}

	var all []testenv.Secret
	all = append(all, ambient...)
	for _, r := range reqs {
		all = append(all, r.secrets...)
	}
	t.Run("ambient secrets", func(t *testing.T) {
		for _, ch := range channels {
			testenv.CheckNoSecrets(t, ch.name, ch.text, ambient, all)
		}
		checkLogFiles(t, ambient, all)
		for i, r := range reqs {
			testenv.CheckNoSecrets(t, "the answer to "+r.name, answers[i], ambient, all)
		}
	})
	for i, r := range reqs {
		if len(r.secrets) == 0 {
			continue
		}
		t.Run(r.name, func(t *testing.T) {
			for _, ch := range channels {
				testenv.CheckNoSecrets(t, ch.name, ch.text, r.secrets, all)
			}
			checkLogFiles(t, r.secrets, all)
			for j, other := range reqs {
				if j != i {
					testenv.CheckNoSecrets(t, "the answer to another request ("+other.name+")", answers[j], r.secrets, all)
				}
			}
			// Its own answer: the caller's own secrets may come back to it, but they are
			// noted (a proxy in front may log error bodies).
			for _, s := range r.secrets {
				if k, _ := testenv.FindSecret(answers[i], s.Text); k >= 0 && !strings.HasPrefix(answers[i], "200") && os.Getenv("O58_DEBUG") != "" {
					t.Logf("note: %s comes back in the refusal to its own caller", s.Kind)
				}
			}
		})
	}
	if os.Getenv("O58_DEBUG") != "" {
		t.Logf("gateway log:\n%s", testenv.MaskSecrets(logBuf.String(), all))
		for i, r := range reqs {
			t.Logf("%s: %.400s", r.name, testenv.MaskSecrets(answers[i], all))
		}
	}
}
