package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/testenv"
)

// pythonEcho starts testdata/echo_upstream.py: an upstream that parses JSON as vLLM's
// Python stack does (exact names, last duplicate wins) and answers with what it read.
func pythonEcho(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(testenv.Python(t), "testdata/echo_upstream.py")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	port, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("echo upstream did not start: %v", err)
	}
	return "http://127.0.0.1:" + strings.TrimSpace(port) + "/v1"
}

type captureDetector struct {
	mu   sync.Mutex
	seen []obs.Observation
}

func (c *captureDetector) Observe(o obs.Observation) {
	c.mu.Lock()
	c.seen = append(c.seen, o)
	c.mu.Unlock()
}
func (c *captureDetector) last() obs.Observation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[len(c.seen)-1]
}

// TestHostileBodies sends, through the gateway, the bodies with which an attacker made the
// gateway judge one request and the engine run another (issue 12, findings 1–3), to a
// Python upstream; each is refused. Bodies that are forwarded mean to Python what they
// meant to the policy.
func TestHostileBodies(t *testing.T) {
	echo := pythonEcho(t)
	det := &captureDetector{}
	f := newFixture(t, func(c *Config) {
		c.Routes = []Route{
			{Model: "echo-public", Upstreams: []string{echo}},
			{Model: "echo-restricted", Upstreams: []string{echo}},
		}
		c.Models = records{
			"echo-public": {Classification: "public"},
			"echo-restricted": {Classification: "restricted",
				Hardening: &Hardening{LogitBias: "reject", MaxTopLogprobs: 2, MaxN: 1, MaxTokens: 64}},
		}
		c.Detector = det
	})
	limited, _, err := f.gw.cfg.Auth.(*authn.Keys).Create(context.Background(), "alice", 0, []string{"echo-public"})
	if err != nil {
		t.Fatal(err)
	}
	chat, compl := f.srv.URL+"/v1/chat/completions", f.srv.URL+"/v1/completions"
	real := `[{"role":"user","content":"REAL"}]`
	msgs := `"messages":` + real
	refused := []struct{ name, url, key, body string }{
		{"logit_bias then LOGIT_BIAS null", chat, f.alice, `{"model":"echo-restricted","logit_bias":{"300":100},"LOGIT_BIAS":null,` + msgs + `}`},
		{"top_logprobs case variants", chat, f.alice, `{"model":"echo-restricted","logprobs":true,"Top_Logprobs":20,"TOP_LOGPROBS":2,` + msgs + `}`},
		{"n and N", chat, f.alice, `{"model":"echo-restricted","n":100,"N":1,` + msgs + `}`},
		{"max_tokens and MAX_TOKENS", chat, f.alice, `{"model":"echo-restricted","max_tokens":100000,"MAX_TOKENS":10,` + msgs + `}`},
		{"Logit_Bias alone", chat, f.alice, `{"model":"echo-restricted","Logit_Bias":{"300":100},` + msgs + `}`},
		{"long s folds to s", chat, f.alice, `{"model":"echo-restricted","logit_bia\u017f":{"300":100},` + msgs + `}`},
		{"Kelvin sign folds to k", chat, f.alice, `{"model":"echo-restricted","max_to\u212aens":100000,` + msgs + `}`},
		{"model smuggling", chat, limited, `{"model":"echo-restricted","MODEL":"echo-public",` + msgs + `}`},
		{"model duplicate", chat, limited, `{"model":"echo-restricted","model":"echo-public",` + msgs + `}`},
		{"decoy messages", chat, f.alice, `{"model":"echo-public",` + msgs + `,"Messages":[{"role":"user","content":"hi"}]}`},
		{"decoy content in a message", chat, f.alice, `{"model":"echo-public","messages":[{"role":"user","content":"REAL","Content":"hi"}]}`},
		{"exponent count", compl, f.alice, `{"model":"echo-public","prompt":"x","logprobs":1e1}`},
		{"fraction count", chat, f.alice, `{"model":"echo-public","logprobs":true,"top_logprobs":20.0,` + msgs + `}`},
		{"string count", chat, f.alice, `{"model":"echo-public","n":"20",` + msgs + `}`},
		{"negative count", chat, f.alice, `{"model":"echo-public","max_tokens":-1,` + msgs + `}`},
		{"huge count", chat, f.alice, `{"model":"echo-public","max_tokens":99999999999999999999,` + msgs + `}`},
		{"non-canonical token id", chat, f.alice, `{"model":"echo-public","logit_bias":{"300":1,"0300":-100},` + msgs + `}`},
		{"stream_options variant", chat, f.alice, `{"model":"echo-public","stream":true,"stream_options":{"include_usage":true,"Include_Usage":false},` + msgs + `}`},
		{"invalid UTF-8", chat, f.alice, "{\"model\":\"echo-public\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}"},
		{"lone surrogate", chat, f.alice, `{"model":"echo-public","messages":[{"role":"user","content":"\ud800"}]}`},
		{"trailing data", chat, f.alice, `{"model":"echo-public",` + msgs + `}{"model":"echo-restricted"}`},
		{"not an object", chat, f.alice, `[{"model":"echo-public"}]`},
		{"deep nesting", chat, f.alice, `{"model":"echo-public","x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `,` + msgs + `}`},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			resp, m := post(t, tc.url, tc.key, tc.body)
			if resp.StatusCode != 400 || errCode(m) != "invalid_request" {
				t.Fatalf("got %d %v, want 400 invalid_request", resp.StatusCode, m)
			}
		})
	}

	// What Python reads of forwarded bodies is what the policy judged, capped by hardening.
	forwarded := []struct {
		name, url, body string
		want            map[string]any // fields Python saw (the echo's keys)
	}{
		{"caps", chat, `{"model":"echo-public","logprobs":true,"top_logprobs":20,"n":100,"max_tokens":100000,` + msgs + `}`,
			map[string]any{"model": "echo-public", "logprobs": true, "top_logprobs": 5.0, "n": 4.0, "max_tokens": 4096.0}},
		{"escaped name is the same name", chat, `{"model":"echo-public","logit\u005fbias":{"300":100},"max_tokens":7,` + msgs + `}`,
			map[string]any{"model": "echo-public", "max_tokens": 7.0}},
		{"prompt_logprobs and best_of capped", compl, `{"model":"echo-public","prompt":"REAL","prompt_logprobs":20,"best_of":50,"max_tokens":8}`,
			map[string]any{"model": "echo-public", "prompt": "REAL", "prompt_logprobs": 5.0, "best_of": 4.0, "max_tokens": 8.0}},
		{"completions logprobs count capped", compl, `{"model":"echo-restricted","prompt":"REAL","logprobs":2,"max_tokens":8}`,
			map[string]any{"model": "echo-restricted", "prompt": "REAL", "logprobs": 2.0, "max_tokens": 8.0}},
		{"unknown fields pass", chat, `{"model":"echo-public","temperature":0.5,"user":"u","max_tokens":3,` + msgs + `}`,
			map[string]any{"model": "echo-public", "max_tokens": 3.0}},
	}
	for _, tc := range forwarded {
		t.Run(tc.name, func(t *testing.T) {
			resp, m := post(t, tc.url, f.alice, tc.body)
			if resp.StatusCode != 200 {
				t.Fatalf("got %d %v", resp.StatusCode, m)
			}
			seen := echoed(t, m)
			delete(seen, "x_strongroom_tenant")
			var prompt any
			if tc.url == chat {
				prompt = seen["messages"]
				delete(seen, "messages")
			} else if _, ok := tc.want["prompt"]; !ok {
				delete(seen, "prompt")
			}
			if d := cmp.Diff(tc.want, seen); d != "" {
				t.Fatalf("python saw (-want +got):\n%s", d)
			}
			// The detectors were given the bytes the engine read as the prompt.
			var detected any
			if err := json.Unmarshal(det.last().Prompt, &detected); err != nil {
				t.Fatal(err)
			}
			if tc.url == chat && !cmp.Equal(prompt, detected) {
				t.Fatalf("engine read prompt %v, detectors saw %v", prompt, detected)
			}
		})
	}
}

// echoed returns what the echo upstream said it parsed.
func echoed(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	ch, _ := m["choices"].([]any)
	if len(ch) == 0 {
		t.Fatalf("no choices in %v", m)
	}
	content := ch[0].(map[string]any)["message"].(map[string]any)["content"].(string)
	var seen map[string]any
	if err := json.Unmarshal([]byte(content), &seen); err != nil {
		t.Fatal(err)
	}
	return seen
}

// engineView is what an engine that matches names exactly and lets the last duplicate win
// (Python's json, serde with last-wins) reads of the fields the gateway judges, with
// pydantic-style lax coercion of numbers ("20", 20.0 → 20).
type engineView struct {
	Model                          string
	Prompt                         string // compact JSON
	LogitBias                      map[string]float64
	Logprobs                       any
	TopLogprobs, PromptLogprobs    *int
	N, BestOf, MaxTokens, MaxCompl *int
}

func laxInt(raw json.RawMessage) *int {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return nil
	}
	var f float64
	switch x := v.(type) {
	case float64:
		f = x
	case string:
		if json.Unmarshal([]byte(x), &f) != nil {
			return nil
		}
	default:
		return nil
	}
	n := int(f)
	return &n
}

func readEngineView(t *testing.T, body []byte, promptField string) engineView {
	var m map[string]json.RawMessage // encoding/json into a map: exact names, last wins
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("forwarded body is not JSON: %v\n%s", err, body)
	}
	var v engineView
	json.Unmarshal(m["model"], &v.Model)
	if p, ok := m[promptField]; ok {
		var b bytes.Buffer
		json.Compact(&b, p)
		v.Prompt = b.String()
	}
	json.Unmarshal(m["logit_bias"], &v.LogitBias)
	if len(v.LogitBias) == 0 {
		v.LogitBias = nil
	}
	json.Unmarshal(m["logprobs"], &v.Logprobs)
	if _, isNum := v.Logprobs.(float64); isNum {
		v.Logprobs = laxInt(m["logprobs"])
	}
	if v.Logprobs == false {
		v.Logprobs = nil
	}
	v.TopLogprobs, v.PromptLogprobs = laxInt(m["top_logprobs"]), laxInt(m["prompt_logprobs"])
	v.N, v.BestOf, v.MaxTokens, v.MaxCompl = laxInt(m["n"]), laxInt(m["best_of"]), laxInt(m["max_tokens"]), laxInt(m["max_completion_tokens"])
	return v
}

// judgedView is the same fields as the gateway judged them, after hardening's caps.
func judgedView(f *features, promptField string) engineView {
	v := engineView{Model: f.Model, LogitBias: f.LogitBias, TopLogprobs: f.TopLogprobs, PromptLogprobs: f.PromptLogprobs,
		N: f.N, BestOf: f.BestOf, MaxTokens: f.MaxTokens, MaxCompl: f.MaxCompl}
	if len(v.LogitBias) == 0 {
		v.LogitBias = nil
	}
	if f.Prompt != nil {
		var b bytes.Buffer
		json.Compact(&b, f.Prompt)
		v.Prompt = b.String()
	}
	switch {
	case f.LogprobsN != nil:
		v.Logprobs = f.LogprobsN
	case f.LogprobsOn:
		v.Logprobs = true
	}
	return v
}

// FuzzDifferential: for any body the gateway would forward, an exact-name last-wins decoder
// of the forwarded bytes reads the same model, prompt, logit_bias, logprobs, top_logprobs,
// n and max_tokens that the policy judged (capped by hardening), and a case-insensitive
// decoder (encoding/json into a struct, as a Go engine would) reads the same too.
func FuzzDifferential(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":20,"n":9,"max_tokens":100000}`,
		`{"model":"m","logit_bias":{"300":100},"LOGIT_BIAS":null,"messages":[]}`,
		`{"model":"a","MODEL":"b"}`,
		`{"model":"m","prompt":"x","logprobs":1e1,"best_of":5,"prompt_logprobs":9,"stream":true}`,
		`{"model":"m","logit\u005fbias":{"1":2},"max_completion_tokens":99999,"stream_options":{"include_usage":false}}`,
		`{"model":"m","messages":[{"content":"a","Content":"b"}],"logit_bia\u017f":{}}`,
		`{ "model" : "m" , "n" : 3 , "messages" : [ ] }`,
	} {
		f.Add([]byte(s), uint8(0))
	}
	endpoints := []string{"chat", "completions", "embeddings"}
	hards := []Hardening{DefaultHardening(), {LogitBias: "allow", MaxTopLogprobs: -1, MaxN: 1, MaxTokens: 64}, {LogitBias: "allow"}}
	f.Fuzz(func(t *testing.T, body []byte, sel uint8) {
		endpoint := endpoints[int(sel)%len(endpoints)]
		hard := hards[int(sel/4)%len(hards)]
		promptField := map[string]string{"chat": "messages", "completions": "prompt", "embeddings": "input"}[endpoint]
		feat, err := parseRequest(body, endpoint)
		if err != nil {
			return // refused: nothing is forwarded
		}
		judged := asked(feat)
		out, err := applyHardening(hard, body, feat, endpoint)
		if err != nil {
			return
		}
		want := judgedView(feat, promptField)
		if got := readEngineView(t, out, promptField); !cmp.Equal(want, got) {
			t.Fatalf("engine reads differently (-judged +engine):\n%s\nforwarded: %s", cmp.Diff(want, got), out)
		}
		// A Go engine matches names case-insensitively: it must read the same.
		var goView struct {
			Model       string `json:"model"`
			N           *int   `json:"n"`
			MaxTokens   *int   `json:"max_tokens"`
			TopLogprobs *int   `json:"top_logprobs"`
		}
		if err := json.Unmarshal(out, &goView); err == nil {
			if goView.Model != feat.Model || !cmp.Equal(goView.N, feat.N) || !cmp.Equal(goView.MaxTokens, feat.MaxTokens) || !cmp.Equal(goView.TopLogprobs, feat.TopLogprobs) {
				t.Fatalf("case-insensitive engine reads differently: %+v vs %+v\nforwarded: %s", goView, feat, out)
			}
		}
		// Hardening never lets through more than the policy judged.
		if on, top := feat.logprobs(); (on && !judged.Logprobs) || top > judged.TopLogprobs || feat.n() > judged.N {
			t.Fatalf("forwarded asks for more than judged: %s", out)
		}
	})
}

func TestFoldKey(t *testing.T) {
	for _, c := range [][2]string{{"LOGIT_BIAS", "logit_bias"}, {"logit_bia\u017f", "logit_bias"}, {"max_to\u212aens", "max_tokens"}, {"Ω", foldKey("ω")}} {
		if foldKey(c[0]) != foldKey(c[1]) {
			t.Errorf("foldKey(%q)=%q != foldKey(%q)=%q", c[0], foldKey(c[0]), c[1], foldKey(c[1]))
		}
	}
	if foldKey("n") == foldKey("m") {
		t.Fatal("distinct names fold together")
	}
}
