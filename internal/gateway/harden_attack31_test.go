package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/modelrec"
)

// Attack 31: logprob shaping must hold for every field in which an OpenAI-compatible engine
// (vLLM) returns log-probabilities, in JSON answers and in streams, and for every spelling of
// a request that makes the engine return them. The engine's raw values all contain the digit
// run "23456789" (-0.123456789, -1.23456789e-1): with RoundLogprobs 2 that run must never
// reach the client.

const raw31 = "23456789"

// engine31 answers every POST with answer(request) under contentType, and GET with an empty
// model list.
func engine31(t *testing.T, contentType string, answer func(req map[string]any) string) *httptest.Server {
	t.Helper()
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		b, _ := io.ReadAll(r.Body)
		var req map[string]any
		json.Unmarshal(b, &req)
		w.Header().Set("Content-Type", contentType)
		io.WriteString(w, answer(req))
	}))
	t.Cleanup(eng.Close)
	return eng
}

func fixture31(t *testing.T, engURL string, h Hardening) *fixture {
	return newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{engURL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public", Hardening: &h}
	})
}

var hard31 = Hardening{MaxTopLogprobs: 5, MaxN: 4, MaxTokens: 64, RoundLogprobs: 2}

const (
	chatReq31  = `{"model":"eng","logprobs":true,"top_logprobs":2,"messages":[{"role":"user","content":"hi"}]}`
	complReq31 = `{"model":"eng","logprobs":2,"echo":true,"prompt":"hi there"}`
)

// vLLM's Logprob object (vllm/logprobs.py): logprob, rank, decoded_token; prompt_logprobs is
// a list (first entry null) of maps token id -> Logprob.
const promptLogprobs31 = `[null,{"1234":{"logprob":-0.123456789,"rank":1,"decoded_token":" there"},"99":{"logprob":-2.123456789,"rank":2,"decoded_token":" here"}}]`

// TestAttack31JSONShapes: answers that are not streamed, one per shape an engine returns
// logprobs in. Each must reach the client shaped (no raw digit run) or be refused.
func TestAttack31JSONShapes(t *testing.T) {
	chatContent := `{"content":[{"token":"x","logprob":-0.123456789,"bytes":[120],"top_logprobs":[{"token":"x","logprob":-0.123456789,"bytes":[120]},{"token":"y","logprob":-1.123456789,"bytes":[121]}]}]}`
	cases := []struct {
		name, endpoint, req, answer string
	}{
		// Controls: the shapes the shaper knows.
		{"chat content+top_logprobs", "chat/completions", chatReq31,
			`{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"logprobs":` + chatContent + `}]}`},
		{"chat n=2", "chat/completions", `{"model":"eng","n":2,"logprobs":true,"top_logprobs":2,"messages":[{"role":"user","content":"hi"}]}`,
			`{"choices":[{"index":0,"message":{"content":"x"},"logprobs":` + chatContent + `},{"index":1,"message":{"content":"x"},"logprobs":` + chatContent + `}]}`},
		{"completions echo token_logprobs", "completions", complReq31,
			`{"object":"text_completion","choices":[{"index":0,"text":"hi there x","logprobs":{"text_offset":[0,2,8],"tokens":["hi"," there"," x"],"token_logprobs":[null,-0.123456789,-1.123456789],"top_logprobs":[null,{" there":-0.123456789," here":-2.123456789},{" x":-1.123456789}]}}]}`},
		// vLLM: ChatCompletionResponse.prompt_logprobs (top level) for a chat request with
		// prompt_logprobs (capped to MaxTopLogprobs, not stripped).
		{"chat top-level prompt_logprobs (vLLM)", "chat/completions",
			`{"model":"eng","logprobs":true,"prompt_logprobs":1,"messages":[{"role":"user","content":"hi there"}]}`,
			`{"object":"chat.completion","choices":[{"index":0,"message":{"content":"x"},"logprobs":` + chatContent + `}],"prompt_logprobs":` + promptLogprobs31 + `}`},
		{"chat prompt_logprobs only (vLLM)", "chat/completions",
			`{"model":"eng","prompt_logprobs":1,"messages":[{"role":"user","content":"hi there"}]}`,
			`{"object":"chat.completion","choices":[{"index":0,"message":{"content":"x"},"logprobs":null}],"prompt_logprobs":` + promptLogprobs31 + `}`},
		// vLLM: CompletionResponseChoice.prompt_logprobs; echo with logprobs sets
		// prompt_logprobs = logprobs, so a plain echo request gets it.
		{"completions choice prompt_logprobs (vLLM echo)", "completions", complReq31,
			`{"object":"text_completion","choices":[{"index":0,"text":"hi there x","logprobs":{"tokens":["hi"," there"," x"],"token_logprobs":[null,-0.5,-1.5],"top_logprobs":[null,{" there":-0.5},{" x":-1.5}]},"prompt_logprobs":` + promptLogprobs31 + `}]}`},
		// OpenAI: chat logprobs.refusal has the content's shape.
		{"chat logprobs.refusal", "chat/completions", chatReq31,
			`{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"no"},"logprobs":{"content":null,"refusal":[{"token":"no","logprob":-0.123456789,"bytes":[110,111],"top_logprobs":[{"token":"no","logprob":-0.123456789,"bytes":[110,111]}]}]}}]}`},
		// Spellings a JSON parser reads as the same document.
		{"escaped key \\u006cogprob", "chat/completions", chatReq31,
			`{"choices":[{"index":0,"message":{"content":"x"},"\u006cogprobs":{"\u0063ontent":[{"token":"x","\u006cogprob":-0.123456789,"top_logprobs":[{"token":"x","lo\u0067prob":-0.123456789}]}]}}]}`},
		{"exponent form", "chat/completions", chatReq31,
			`{"choices":[{"index":0,"message":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-1.23456789e-1,"top_logprobs":[{"token":"x","logprob":-1.23456789E-1}]}]}}]}`},
		{"1E400 and -0.0", "chat/completions", chatReq31,
			`{"choices":[{"index":0,"message":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.0,"top_logprobs":[{"token":"x","logprob":-1E400},{"token":"y","logprob":-0.123456789}]}]}}]}`},
		{"duplicate logprob key", "chat/completions", chatReq31,
			`{"choices":[{"index":0,"message":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.123456789,"logprob":-0.5}]}}]}`},
		// A duplicate that a last-wins parser (Go, JS, Python) reads as "no logprobs": the
		// gateway sees nothing to shape and relays the bytes as they are.
		{"duplicate choices (last empty)", "chat/completions", chatReq31,
			`{"choices":[{"index":0,"message":{"content":"x"},"logprobs":` + chatContent + `}],"choices":[]}`},
		// Key case variants: Go's map keeps the case; the shaper looks for lower case only.
		{"case variant Logprobs", "chat/completions", chatReq31,
			`{"choices":[{"index":0,"message":{"content":"x"},"Logprobs":` + chatContent + `}]}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eng := engine31(t, "application/json", func(map[string]any) string { return tc.answer })
			f := fixture31(t, eng.URL, hard31)
			resp, got := postRaw(t, f.srv.URL+"/v1/"+tc.endpoint, f.alice, tc.req)
			if strings.Contains(got, raw31) {
				t.Fatalf("an unshaped logprob reached the client (status %d): %.600s", resp.StatusCode, got)
			}
			switch {
			case strings.Contains(tc.answer, "1E400"):
				if resp.StatusCode == http.StatusOK {
					t.Fatalf("an answer the shaper cannot parse was relayed: %.300s", got)
				}
			case resp.StatusCode != http.StatusOK:
				t.Fatalf("status %d: %.300s", resp.StatusCode, got)
			case strings.Contains(tc.answer, "choices\":[]") || strings.Contains(tc.answer, "Logprobs"):
			case !strings.Contains(got, "-0.12") && !strings.Contains(got, "-0.5"):
				t.Fatalf("the shaped value is missing: %.300s", got)
			}
		})
	}
}

// TestAttack31StreamShapes: the same for streams. An event the gateway cannot shape must end
// the stream without [DONE]; otherwise no raw value may reach the client.
func TestAttack31StreamShapes(t *testing.T) {
	ev := func(s string) string { return "data: " + s + "\n\n" }
	chatChunk := `{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.123456789,"bytes":[120],"top_logprobs":[{"token":"x","logprob":-0.123456789,"bytes":[120]}]}]}}]}`
	chatReq := `{"model":"eng","stream":true,"logprobs":true,"top_logprobs":2,"messages":[{"role":"user","content":"hi"}]}`
	complReq := `{"model":"eng","stream":true,"logprobs":2,"echo":true,"prompt":"hi there"}`
	cases := []struct {
		name, endpoint, req, stream string
	}{
		{"chat control", "chat/completions", chatReq, ev(chatChunk)},
		{"chat n=2 chunks", "chat/completions", chatReq,
			ev(chatChunk) + ev(strings.Replace(chatChunk, `"index":0`, `"index":1`, 1))},
		{"completions echo first chunk", "completions", complReq,
			ev(`{"object":"text_completion","choices":[{"index":0,"text":"hi there","logprobs":{"text_offset":[0,2],"tokens":["hi"," there"],"token_logprobs":[null,-0.123456789],"top_logprobs":[null,{" there":-0.123456789," here":-2.123456789}]}}]}`)},
		// vLLM (return_token_ids / echo streaming): the first chunk carries the choice's
		// prompt_logprobs.
		{"completions chunk prompt_logprobs", "completions", complReq,
			ev(`{"object":"text_completion","choices":[{"index":0,"text":"","prompt_token_ids":[1,1234],"prompt_logprobs":`+promptLogprobs31+`}]}`) +
				ev(`{"object":"text_completion","choices":[{"index":0,"text":" x","logprobs":{"tokens":[" x"],"token_logprobs":[-0.5],"top_logprobs":[{" x":-0.5}]}}]}`)},
		{"chat chunk logprobs.refusal", "chat/completions", chatReq,
			ev(`{"choices":[{"index":0,"delta":{"refusal":"no"},"logprobs":{"content":null,"refusal":[{"token":"no","logprob":-0.123456789,"top_logprobs":[{"token":"no","logprob":-0.123456789}]}]}}]}`)},
		// The word "logprob" never appears literally: the stream's pre-filter
		// (bytes.Contains(payload, "logprob")) lets the event through unparsed, and any JSON
		// parser (JSON.parse, json.loads) reads logprobs.content[0].logprob.
		{"escaped keys, no literal 'logprob'", "chat/completions", chatReq,
			ev(`{"choices":[{"index":0,"delta":{"content":"x"},"\u006cogprobs":{"content":[{"token":"x","\u006cogprob":-0.123456789}]}}]}`)},
		// WHATWG event-stream: one leading U+FEFF is ignored; the first line is then a data
		// line to every EventSource-conformant client.
		{"UTF-8 BOM before first data line", "chat/completions", chatReq, "\ufeff" + ev(chatChunk)},
		{"exponent form", "chat/completions", chatReq,
			ev(strings.ReplaceAll(chatChunk, "-0.123456789", "-1.23456789e-1"))},
		{"1E400", "chat/completions", chatReq,
			ev(`{"choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-1E400,"top_logprobs":[{"token":"y","logprob":-0.123456789}]}]}}]}`)},
		{"duplicate choices (last empty)", "chat/completions", chatReq,
			ev(`{"choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.123456789}]}}],"choices":[]}`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eng := engine31(t, "text/event-stream", func(map[string]any) string { return tc.stream + "data: [DONE]\n\n" })
			f := fixture31(t, eng.URL, hard31)
			_, got := postRaw(t, f.srv.URL+"/v1/"+tc.endpoint, f.alice, tc.req)
			if strings.Contains(got, raw31) {
				t.Fatalf("an unshaped logprob reached the client ([DONE] read: %v): %.600q", sseDone(got), got)
			}
			if strings.Contains(tc.stream, "1E400") {
				if sseDone(got) {
					t.Fatalf("a stream with an event the shaper cannot parse read as complete: %.300q", got)
				}
			} else if !sseDone(got) {
				t.Fatalf("shaped stream incomplete: %.300q", got)
			} else if !strings.Contains(tc.name, "duplicate") && !strings.Contains(got, "-0.12") && !strings.Contains(got, "-0.5") {
				// (Duplicate keys: the event is re-encoded from what the parser kept, the
				// last "choices" — empty: no value to find, none raw either. Adapted after
				// the fix, 13th session.)
				t.Fatalf("shaped value missing: %.300q", got)
			}
		})
	}
}

// TestAttack31CompletionsLogprobsFalse: vLLM's CompletionRequest.logprobs is Optional[int],
// validated by pydantic in lax mode, where a JSON boolean is a valid int (false -> 0).
// logprobs 0 returns the sampled token's logprob (and, with echo, the prompt's). The gateway
// reads completions' "logprobs": false as "logprobs off": no shaper, no cap, no strip even
// when the model forbids logprobs (MaxTopLogprobs -1).
func TestAttack31CompletionsLogprobsFalse(t *testing.T) {
	// A vLLM-like completions engine: logprobs present and not null -> int(logprobs).
	answer := func(req map[string]any) string {
		v, ok := req["logprobs"]
		if !ok || v == nil {
			return `{"object":"text_completion","choices":[{"index":0,"text":" x","logprobs":null}]}`
		}
		return `{"object":"text_completion","choices":[{"index":0,"text":"hi there x","logprobs":{"tokens":["hi"," there"," x"],"token_logprobs":[null,-0.123456789,-1.123456789],"top_logprobs":[null,{" there":-0.123456789},{" x":-1.123456789}]}}]}`
	}
	for _, tc := range []struct {
		name string
		h    Hardening
	}{
		{"rounded", hard31},
		{"logprobs forbidden", Hardening{MaxTopLogprobs: -1, MaxN: 4, MaxTokens: 64, RoundLogprobs: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eng := engine31(t, "application/json", answer)
			f := fixture31(t, eng.URL, tc.h)
			resp, got := postRaw(t, f.srv.URL+"/v1/completions", f.alice,
				`{"model":"eng","logprobs":false,"echo":true,"prompt":"hi there"}`)
			if strings.Contains(got, raw31) {
				t.Fatalf("an unshaped logprob reached the client (status %d): %.600s", resp.StatusCode, got)
			}
		})
	}
}
