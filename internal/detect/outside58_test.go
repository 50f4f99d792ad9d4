package detect

// Outside round 58 (users' secrets in every output), the detectors: every request's prompt
// reaches the Responder in memory (obs.Observation.Prompt). What it writes — alerts and
// actions in the audit log (their reason is the alert's evidence), the incident a webhook
// receives, its log lines, the trace file without --record-prompts — must hold no prompt:
// not a marker every prompt carries, not any run of five of a prompt's words.

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/testenv"
)

const o58Prompt = "PromptMarker58detect"

// o58Shingles are the runs of five consecutive words of s.
func o58Shingles(s string, into map[string]struct{}) {
	w := strings.Fields(s)
	for i := 0; i+5 <= len(w); i++ {
		into[strings.Join(w[i:i+5], " ")] = struct{}{}
	}
}

// o58FindPrompt reports the first of text's five-word runs that is a prompt's, or the
// marker, with the text around it.
func o58FindPrompt(text string, prompts map[string]struct{}) (string, bool) {
	if i := strings.Index(text, o58Prompt); i >= 0 {
		return text[max(0, i-200):min(len(text), i+len(o58Prompt)+100)], true
	}
	w := strings.Fields(text)
	for i := 0; i+5 <= len(w); i++ {
		if _, ok := prompts[strings.Join(w[i:i+5], " ")]; ok {
			return strings.Join(w[max(0, i-20):min(len(w), i+25)], " "), true
		}
	}
	return "", false
}

// TestOutside58DetectorOutputs replays the simulator's attacks and benign traffic, each
// prompt carrying a marker, through a Responder with a webhook and a trace writer.
func TestOutside58DetectorOutputs(t *testing.T) {
	var reqs []Request
	for _, sc := range []string{"logit-harvest", "probing", "egress", "hydra"} {
		rs, err := Simulate(sc, 58, 1)
		if err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, rs...)
	}
	prompts := map[string]struct{}{}
	for i := range reqs {
		reqs[i].Prompt = o58Prompt + " " + reqs[i].Prompt
		o58Shingles(reqs[i].Prompt, prompts)
	}
	var mu sync.Mutex
	var hooks []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		hooks = append(hooks, string(b))
		mu.Unlock()
	}))
	defer hook.Close()
	var logBuf testenv.LogBuffer
	aud := &seqAudit{}
	resp := NewResponder(New(Config{HarvestTokens: 10, ClusterEvery: 500}), ResponderConfig{Audit: aud, Webhook: hook.URL, WebhookSecret: []byte("k"),
		Duration: time.Hour, Log: slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	red, _ := audit.NewRedactor(bytes.Repeat([]byte{7}, 32))
	var traceBuf bytes.Buffer
	tw := NewTraceWriter(&traceBuf, red.Digest)
	for _, r := range reqs {
		o := obs.Observation{TS: r.TS, Principal: r.Principal, Tenant: "t", IP: r.IP, Model: r.Model, Endpoint: r.Endpoint, Prompt: []byte(r.Prompt),
			MaxTokens: r.Params.MaxTokens, Logprobs: r.Params.Logprobs, TopLogprobs: r.Params.TopLogprobs, LogitBias: r.Params.LogitBias,
			N: r.Params.N, PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens, Decision: "allow"}
		resp.Observe(o)
		tw.Observe(o)
	}
	resp.Wait()
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	aud.mu.Lock()
	evs := slicesClone(aud.evs)
	aud.mu.Unlock()
	detectors := map[string]bool{}
	for _, e := range evs {
		detectors[e.Fields["detector"]] = true
	}
	if len(evs) == 0 || len(detectors) < 2 {
		t.Fatalf("premise: the replay raised %d audit events from detectors %v", len(evs), detectors)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d requests replayed: %d audit events from detectors %v, %d webhook calls", len(reqs), len(evs), detectors, len(hooks))
	if len(hooks) == 0 {
		t.Fatalf("premise: no webhook call")
	}
	if !strings.Contains(traceBuf.String(), `"prompt":"hmac-sha256:`) {
		t.Fatalf("premise: the trace holds no digests: %.300s", traceBuf.String())
	}
	type channel struct{ name, text string }
	chs := []channel{{"the Responder's log at debug level", logBuf.String()}, {"the trace file written without --record-prompts", traceBuf.String()}}
	for _, e := range evs {
		b, _ := json.Marshal(e)
		chs = append(chs, channel{"audit event " + string(e.Kind) + " (detector " + e.Fields["detector"] + ")", string(b)})
	}
	for _, h := range hooks {
		chs = append(chs, channel{"an incident sent to the alert webhook", h})
	}
	for _, c := range chs {
		if around, ok := o58FindPrompt(c.text, prompts); ok {
			t.Errorf("LEAK: a prompt is in %s: …%s…", c.name, strings.ReplaceAll(around, o58Prompt, "<PROMPT>"))
		}
	}
	// The operator's opt-in (--record-prompts): the trace holds them, as documented.
	var clear bytes.Buffer
	tw2 := NewTraceWriter(&clear, nil)
	tw2.Observe(obs.Observation{TS: time.Now(), Principal: "p", Prompt: []byte(`"` + o58Prompt + `"`)})
	tw2.Close()
	if !strings.Contains(clear.String(), o58Prompt) {
		t.Errorf("premise: --record-prompts did not record the prompt: %s", clear.String())
	}
}

func slicesClone[T any](s []T) []T { return append([]T(nil), s...) }
