package refmodel

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/watermark"
)

func llamaServer(t *testing.T) *httptest.Server {
	t.Helper()
	lm, err := LoadLlamaLM(filepath.Join("testdata", "tiny-f32"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(&Server{Name: "tiny", LM: lm})
	t.Cleanup(srv.Close)
	return srv
}

type chatResp struct {
	Choices []struct {
		Message      struct{ Content string }
		FinishReason string `json:"finish_reason"`
		Logprobs     struct {
			Content []struct {
				Token       string
				Logprob     float64
				TopLogprobs []struct {
					Token   string
					Logprob float64
					Bytes   []int
				} `json:"top_logprobs"`
			}
		}
	}
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	}
}

func chat(t *testing.T, url string, body map[string]any) chatResp {
	t.Helper()
	body["model"] = "tiny"
	if _, ok := body["messages"]; !ok {
		body["messages"] = []map[string]string{{"role": "system", "content": "be brief"}, {"role": "user", "content": "the model weights"}}
	}
	b, _ := json.Marshal(body)
	resp, err := http.Post(url+"/v1/chat/completions", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var r chatResp
	json.NewDecoder(resp.Body).Decode(&r)
	return r
}

// TestLlamaServer: real log-softmax logprobs, logit_bias, seeded sampling, top_p, and the
// same text streamed as not.
func TestLlamaServer(t *testing.T) {
	srv := llamaServer(t)
	r := chat(t, srv.URL, map[string]any{"max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 5})
	c := r.Choices[0]
	if len(c.Logprobs.Content) == 0 || r.Usage.CompletionTokens != len(c.Logprobs.Content) || r.Usage.PromptTokens < 10 {
		t.Fatalf("response %+v", r)
	}
	for _, step := range c.Logprobs.Content {
		tops := step.TopLogprobs
		if len(tops) != 5 || tops[0].Logprob < tops[4].Logprob || tops[0].Logprob > 0 {
			t.Fatalf("top logprobs %+v", tops)
		}
		if step.Token != tops[0].Token { // greedy picks the most likely token
			t.Fatalf("greedy token %q is not the top one %q", step.Token, tops[0].Token)
		}
		mass := 0.0
		for _, a := range tops {
			mass += math.Exp(a.Logprob)
		}
		if mass > 1+1e-9 {
			t.Fatalf("top-5 probability mass %g > 1", mass)
		}
	}
	// logit_bias +100 on one token makes it the answer.
	biased := chat(t, srv.URL, map[string]any{"max_tokens": 3, "temperature": 0, "logit_bias": map[string]float64{"104": 100}})
	if biased.Choices[0].Message.Content != "hhh" {
		t.Fatalf("biased answer %q", biased.Choices[0].Message.Content)
	}
	// Seeded sampling is reproducible; another seed differs.
	a := chat(t, srv.URL, map[string]any{"max_tokens": 12, "temperature": 1, "seed": 3})
	b := chat(t, srv.URL, map[string]any{"max_tokens": 12, "temperature": 1, "seed": 3})
	d := chat(t, srv.URL, map[string]any{"max_tokens": 12, "temperature": 1, "seed": 4})
	if a.Choices[0].Message.Content != b.Choices[0].Message.Content || a.Choices[0].Message.Content == d.Choices[0].Message.Content {
		t.Fatalf("seeded sampling: %q %q %q", a.Choices[0].Message.Content, b.Choices[0].Message.Content, d.Choices[0].Message.Content)
	}
	// top_p tiny: only the most likely token survives, so sampling equals greedy.
	g := chat(t, srv.URL, map[string]any{"max_tokens": 6, "temperature": 0})
	p := chat(t, srv.URL, map[string]any{"max_tokens": 6, "temperature": 1, "top_p": 1e-9, "seed": 9})
	if g.Choices[0].Message.Content != p.Choices[0].Message.Content {
		t.Fatalf("top_p→0 %q differs from greedy %q", p.Choices[0].Message.Content, g.Choices[0].Message.Content)
	}
	// Streaming sends the same text as one answer.
	body, _ := json.Marshal(map[string]any{"model": "tiny", "max_tokens": 6, "temperature": 0, "stream": true,
		"messages": []map[string]string{{"role": "system", "content": "be brief"}, {"role": "user", "content": "the model weights"}}})
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var streamed strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var ch struct {
			Choices []struct{ Delta struct{ Content string } }
		}
		json.Unmarshal([]byte(line), &ch)
		if len(ch.Choices) > 0 {
			streamed.WriteString(ch.Choices[0].Delta.Content)
		}
	}
	if streamed.String() != g.Choices[0].Message.Content {
		t.Fatalf("streamed %q, answered %q", streamed.String(), g.Choices[0].Message.Content)
	}
}

// TestTournamentOnLlama: text the tiny transformer samples through a tenant's tournament
// watermark is found under that tenant's key — from the sampled tokens and from the text
// re-tokenized — and not under another's; unwatermarked text is not flagged.
func TestTournamentOnLlama(t *testing.T) {
	lm, err := LoadLlamaLM(filepath.Join("testdata", "tiny-f32"))
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{5}, 32)
	acme, _ := watermark.DeriveTournament(secret, "acme")
	other, _ := watermark.DeriveTournament(secret, "globex")
	prompt := lm.PromptTokens([]ChatMessage{{Role: "user", Content: "the model weights"}}, "", true)
	gen := func(hook func([]int, []float64), seed uint64) []int {
		steps, err := lm.Generate(prompt, GenOptions{N: 34, Temperature: 1, TopP: 1, Seed: seed, Hook: hook})
		if err != nil {
			t.Fatal(err)
		}
		toks := append([]int(nil), prompt[len(prompt)-4:]...)
		for _, s := range steps {
			toks = append(toks, s.Token)
		}
		return toks
	}
	var wm, plain []int
	for seed := range uint64(8) { // 8 answers of 34 tokens (the tiny model has 64 positions)
		wm = append(wm, gen(acme.Apply, seed)...)
		plain = append(plain, gen(nil, seed)...)
	}
	if s := acme.Detect(wm); !s.Verdict(1e-3) {
		t.Fatalf("watermark not found in sampled tokens: %v", s)
	}
	if s := other.Detect(wm); s.Verdict(1e-3) {
		t.Fatalf("another tenant's key matched: %v", s)
	}
	if s := acme.Detect(plain); s.Verdict(1e-3) {
		t.Fatalf("unwatermarked text flagged: %v", s)
	}
	retok := lm.T.Encode(lm.T.Decode(wm))
	s := acme.Detect(retok)
	t.Logf("sampled tokens: %v; re-tokenized text (%d vs %d tokens): %v", acme.Detect(wm), len(retok), len(wm), s)
}
