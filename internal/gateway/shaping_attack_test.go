package gateway

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// Hardening against logit extraction must hold for every shape of answer an engine can
// send: logprobs are rounded whatever the event's size, spelling or format, and an event
// the gateway cannot shape is never relayed raw (the stream ends instead).

// keptRecords keeps every record and reports it durable.
type keptRecords struct {
	mu   sync.Mutex
	recs []audit.Event
}

func (k *keptRecords) SubmitEncoded(_ context.Context, rec store.AuditEvent) audit.Future {
	ev := mustParseRecord(rec)
	k.mu.Lock()
	k.recs = append(k.recs, *ev)
	k.mu.Unlock()
	return func() (uint64, error) { return 0, nil }
}
func (*keptRecords) Healthy() error { return nil }

// rawValue is a logprob no shaper with 2 decimals leaves as it is.
const rawValue = "-0.123456789"

func TestAttackShapingStreamShapes(t *testing.T) {
	pad := strings.Repeat("p", 40<<10) // makes an event longer than the stream reader's 32 KiB
	chatEvent := func(token string) string {
		return `{"choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"` + token + `","logprob":` + rawValue + `,"top_logprobs":[{"token":"y","logprob":` + rawValue + `}]}]}}]}`
	}
	complEvent := `{"choices":[{"index":0,"text":"x","logprobs":{"tokens":["x"],"token_logprobs":[` + rawValue + `],"top_logprobs":[{"x":` + rawValue + `}]}}]}`
	cases := []struct {
		name, endpoint, stream string
		complete               bool // the client reads [DONE]: every event was shaped
	}{
		{"chat", "chat/completions", "data: " + chatEvent("a") + "\n\n", true},
		{"completions format", "completions", "data: " + complEvent + "\n\n", true},
		{"no space after data:", "chat/completions", "data:" + chatEvent("a") + "\n\n", true},
		{"event over 32 KiB", "chat/completions", "data: " + chatEvent(pad) + "\n\n", true},
		{"CRLF lines", "chat/completions", "data: " + chatEvent("a") + "\r\n\r\n", true},
		// A data event split over two lines cannot be parsed line by line: the stream ends
		// before either half goes out.
		{"split over data lines", "chat/completions", "data: " + strings.Replace(chatEvent("a"), `"logprob":`, "\ndata: \"logprob\":", 1) + "\n\n", false},
		{"not JSON", "chat/completions", "data: {\"logprobs\": " + rawValue + ",\n\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					w.Write([]byte(`{"object":"list","data":[]}`))
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, tc.stream)
				io.WriteString(w, "data: [DONE]\n\n")
			}))
			defer eng.Close()
			f := newFixture(t, func(c *Config) {
				c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
				c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public", Hardening: &Hardening{MaxTopLogprobs: 5, RoundLogprobs: 2}}
			})
			body := `{"model":"eng","stream":true,"logprobs":true,"top_logprobs":1,"messages":[{"role":"user","content":"hi"}]}`
			if tc.endpoint == "completions" {
				body = `{"model":"eng","stream":true,"logprobs":1,"prompt":"hi"}`
			}
			_, raw := postRaw(t, f.srv.URL+"/v1/"+tc.endpoint, f.alice, body)
			if strings.Contains(raw, "123456789") {
				t.Fatalf("an unshaped logprob reached the client: %.400q", raw)
			}
			if got := sseDone(raw); got != tc.complete {
				t.Fatalf("stream complete (read [DONE]) = %v, want %v: %.400q", got, tc.complete, raw)
			}
			if tc.complete && !strings.Contains(raw, "-0.12") {
				t.Fatalf("the shaped value is missing: %.400q", raw)
			}
		})
	}
}

// TestAttackShapingJSONNotParsed: an answer (not streamed) whose logprobs the gateway cannot
// parse is refused, not relayed raw.
func TestAttackShapingJSONNotParsed(t *testing.T) {
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"choices":[{"index":0,"message":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":`+rawValue+`}]}}]`) // no closing brace
	}))
	defer eng.Close()
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public", Hardening: &Hardening{MaxTopLogprobs: 5, RoundLogprobs: 2}}
	})
	resp, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", f.alice,
		`{"model":"eng","logprobs":true,"messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode == http.StatusOK || strings.Contains(raw, "123456789") {
		t.Fatalf("an answer the shaper could not parse was relayed: %d %.300q", resp.StatusCode, raw)
	}
}

// TestStreamUsageEventWithoutBlankLine: a usage-only event the client did not ask for is
// dropped with its blank line — and only a blank line: an engine that sends the next event
// right after it does not lose that event. Lines over the reader's buffer are in the
// output HMAC whole.
func TestStreamUsageEventWithoutBlankLine(t *testing.T) {
	long := strings.Repeat("l", 40<<10)
	stream := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"" + long + "\"}}]}\n\n" +
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":5,\"total_tokens\":8}}\n" +
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"after-usage\"}}]}\n\n" +
		"data: [DONE]\n\n"
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, stream)
	}))
	defer eng.Close()
	kept := &keptRecords{}
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
		c.Records, c.RecordAnswers = kept, true
	})
	_, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", f.alice,
		`{"model":"eng","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	if !strings.Contains(raw, "after-usage") || !strings.Contains(raw, long) || !sseDone(raw) {
		t.Fatalf("the client did not read every event: %d bytes, after-usage %v, [DONE] %v", len(raw), strings.Contains(raw, "after-usage"), sseDone(raw))
	}
	if strings.Contains(raw, `"usage"`) {
		t.Fatalf("the usage event the client did not ask for was relayed")
	}
	h := f.gw.cfg.Redactor.NewHash()
	for _, line := range strings.SplitAfter(stream, "\n") {
		// The output HMAC is of what the client was given: not the usage event it did not
		// ask for (outside round 43).
		if p, ok := strings.CutPrefix(line, "data: "); ok && !strings.Contains(p, `"usage"`) {
			h.Write([]byte(p))
		}
	}
	want := audit.HashDigest(h)
	kept.mu.Lock()
	defer kept.mu.Unlock()
	for _, ev := range kept.recs {
		if ev.Kind == audit.KindRequest {
			if got := ev.Fields["output_hmac"]; got != want {
				t.Fatalf("output HMAC %s, want %s (every payload relayed, the long line whole)", got, want)
			}
			if ev.Fields["completion_tokens"] != "5" {
				t.Fatalf("usage not read: %v", ev.Fields)
			}
			return
		}
	}
	t.Fatalf("no request record among %d", len(kept.recs))
}

// TestShapingTokensNamedLikeFields: in a token-to-logprob map the keys are tokens, and a
// client can make the model emit one spelled "rank" or "index": its logprob is shaped like
// any other, while the real ranks, ids and byte values beside logprobs stay as written.
func TestShapingTokensNamedLikeFields(t *testing.T) {
	s := &logprobShaper{decimals: 2}
	in := `{"choices":[{"index":0,"text":"x","logprobs":{"tokens":["rank"],"token_logprobs":[-0.123456789],` +
		`"top_logprobs":[{"rank":-0.123456789,"index":-1.123456789,"bytes":-2.123456789}],"text_offset":[7]}}],` +
		`"prompt_logprobs":[null,{"1234":{"logprob":-0.123456789,"rank":1,"decoded_token":"id"}}],` +
		`"x":{"content":[{"token":"a","logprob":-0.987654321,"bytes":[97]}]}}`
	out, ok := s.rewrite([]byte(in))
	if !ok {
		t.Fatal("not parsed")
	}
	got := string(out)
	if strings.Contains(got, "123456789") || strings.Contains(got, "987654321") {
		t.Fatalf("a logprob went out unshaped: %s", got)
	}
	for _, want := range []string{`"rank":-0.12`, `"index":-1.12`, `"bytes":-2.12`, `"text_offset":[7]`, `"rank":1`,
		`"logprob":-0.12`, `"index":0`, `"logprob":-0.99`, `"bytes":[97]`} {
		if !strings.Contains(got, want) {
			t.Fatalf("%s missing from %s", want, got)
		}
	}
}
