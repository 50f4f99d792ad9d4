package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/strongroom/strongroom/internal/limits"
)

// TestOpenAICompat drives the gateway (over the bigram reference runtime) with the
// official openai-go client: model retrieval, completions logprobs in the legacy shape,
// top_logprobs with bytes, n choices, embeddings in both encodings, the 400 for a missing
// model and the hardening header.
func TestOpenAICompat(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	alice, bob := f.client(f.alice), f.client(f.bob)

	t.Run("retrieve model", func(t *testing.T) {
		m, err := alice.Models.Get(ctx, "frontier")
		if err != nil || m.ID != "frontier" || m.Object != "model" || m.OwnedBy == "" {
			t.Fatalf("alice gets frontier: %+v %v", m, err)
		}
		// Bob may not use frontier: told exactly what he is told of a model that does not exist.
		var denied, unknown *http.Response
		_, errDenied := bob.Models.Get(ctx, "frontier", option.WithResponseInto(&denied))
		_, errUnknown := bob.Models.Get(ctx, "no-such-model", option.WithResponseInto(&unknown))
		for _, err := range []error{errDenied, errUnknown} {
			var ae *openai.Error
			if !errors.As(err, &ae) || ae.StatusCode != 404 || ae.Code != "model_not_found" || ae.Type != "invalid_request_error" {
				t.Fatalf("want OpenAI's 404 model_not_found, got %v", err)
			}
		}
		if a, b := errDenied.(*openai.Error).RawJSON(), errUnknown.(*openai.Error).RawJSON(); a != b {
			t.Fatalf("a forbidden model is told apart from a missing one:\n%s\n%s", a, b)
		}
		anon := f.client("sr_0000000000000000.AAAA")
		_, err = anon.Models.Get(ctx, "demo")
		var ae *openai.Error
		if !errors.As(err, &ae) || ae.StatusCode != 401 {
			t.Fatalf("unauthenticated retrieve: %v", err)
		}
	})

	t.Run("completions logprobs", func(t *testing.T) {
		c, err := alice.Completions.New(ctx, openai.CompletionNewParams{Model: "demo",
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("the model")}, MaxTokens: openai.Int(6), Logprobs: openai.Int(3)})
		if err != nil {
			t.Fatal(err)
		}
		lp := c.Choices[0].Logprobs
		if len(lp.Tokens) != 6 || len(lp.TokenLogprobs) != 6 || len(lp.TopLogprobs) != 6 || len(lp.TextOffset) != 6 {
			t.Fatalf("logprobs %+v", lp)
		}
		if strings.Join(lp.Tokens, "") != c.Choices[0].Text {
			t.Fatalf("tokens %q do not make the text %q", lp.Tokens, c.Choices[0].Text)
		}
		off := int64(0)
		for i, tok := range lp.Tokens {
			if lp.TextOffset[i] != off || lp.TokenLogprobs[i] > 0 || len(lp.TopLogprobs[i]) != 3 {
				t.Fatalf("token %d: offset %d (want %d), logprob %g, top %v", i, lp.TextOffset[i], off, lp.TokenLogprobs[i], lp.TopLogprobs[i])
			}
			// The alternatives are the likeliest tokens: none is less likely than the one sampled
			// unless it was (the bigram model samples printable bytes only).
			best := math.Inf(-1)
			for _, v := range lp.TopLogprobs[i] {
				best = max(best, v)
			}
			if lp.TokenLogprobs[i] > best+1e-9 {
				t.Fatalf("token %d %q (%g) is likelier than the top alternative (%g)", i, tok, lp.TokenLogprobs[i], best)
			}
			off += int64(len(tok))
		}
	})

	t.Run("chat top_logprobs", func(t *testing.T) {
		r, err := alice.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "demo",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(4),
			Logprobs: openai.Bool(true), TopLogprobs: openai.Int(3)})
		if err != nil {
			t.Fatal(err)
		}
		content := r.Choices[0].Logprobs.Content
		if len(content) != 4 {
			t.Fatalf("%d logprob entries", len(content))
		}
		for _, e := range content {
			if e.Token == "" || !bytes.Equal(intBytes(e.Bytes), []byte(e.Token)) || len(e.TopLogprobs) != 3 {
				t.Fatalf("entry %+v", e)
			}
			for _, a := range e.TopLogprobs {
				if a.Token == "" || len(a.Bytes) == 0 || a.Logprob > 0 {
					t.Fatalf("alternative without its token: %+v", a)
				}
			}
		}
	})

	t.Run("n choices", func(t *testing.T) {
		r, err := alice.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "demo",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(8),
			N: openai.Int(3), Temperature: openai.Float(1.5)})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Choices) != 3 || r.Usage.CompletionTokens != 24 {
			t.Fatalf("%d choices, %d completion tokens", len(r.Choices), r.Usage.CompletionTokens)
		}
		texts := map[string]bool{}
		for i, c := range r.Choices {
			if c.Index != int64(i) || len(c.Message.Content) != 8 {
				t.Fatalf("choice %d: %+v", i, c)
			}
			texts[c.Message.Content] = true
		}
		if len(texts) < 2 {
			t.Fatalf("n samples are one answer repeated: %v", texts)
		}
		// Streamed, the choices come apart by index.
		stream := alice.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "demo",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(5), N: openai.Int(2)})
		var acc openai.ChatCompletionAccumulator
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil || len(acc.Choices) != 2 || len(acc.Choices[1].Message.Content) != 5 {
			t.Fatalf("streamed n=2: %v %+v", err, acc.Choices)
		}
		// A model hardened to one choice answers one, and says so.
		var resp *http.Response
		r, err = alice.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "frontier",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(4), N: openai.Int(3)},
			option.WithResponseInto(&resp))
		if err != nil || len(r.Choices) != 1 || resp.Header.Get(HardenedHeader) != "n=1" {
			t.Fatalf("frontier n=3: %v, %d choices, %s %q", err, len(r.Choices), HardenedHeader, resp.Header.Get(HardenedHeader))
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		emb := func(in openai.EmbeddingNewParamsInputUnion, opts ...func(*openai.EmbeddingNewParams)) *openai.CreateEmbeddingResponse {
			t.Helper()
			p := openai.EmbeddingNewParams{Model: "demo", Input: in}
			for _, o := range opts {
				o(&p)
			}
			r, err := alice.Embeddings.New(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		r := emb(openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"the model weights", "a sealed vault", "the model weights"}})
		if len(r.Data) != 3 || r.Usage.PromptTokens == 0 {
			t.Fatalf("%d vectors, usage %+v", len(r.Data), r.Usage)
		}
		a, b, a2 := r.Data[0].Embedding, r.Data[1].Embedding, r.Data[2].Embedding
		if len(a) != 64 || math.Abs(norm(a)-1) > 1e-5 || slicesEqual(a, b) || !slicesEqual(a, a2) || r.Data[1].Index != 1 {
			t.Fatalf("vectors: len %d, norm %g, distinct inputs equal %v, same input equal %v", len(a), norm(a), slicesEqual(a, b), slicesEqual(a, a2))
		}
		// base64: the same vector as float32 little-endian bytes.
		r64 := emb(openai.EmbeddingNewParamsInputUnion{OfString: openai.String("the model weights")}, func(p *openai.EmbeddingNewParams) {
			p.EncodingFormat = openai.EmbeddingNewParamsEncodingFormatBase64
		})
		s := strings.Trim(r64.Data[0].JSON.Embedding.Raw(), `"`)
		bin, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(bin) != 4*len(a) {
			t.Fatalf("base64 embedding %q: %v", s, err)
		}
		for k := range a {
			if got := math.Float32frombits(binary.LittleEndian.Uint32(bin[4*k:])); got != float32(a[k]) {
				t.Fatalf("base64 component %d = %g, float %g", k, got, a[k])
			}
		}
		short := emb(openai.EmbeddingNewParamsInputUnion{OfString: openai.String("x")}, func(p *openai.EmbeddingNewParams) { p.Dimensions = openai.Int(8) })
		if v := short.Data[0].Embedding; len(v) != 8 || math.Abs(norm(v)-1) > 1e-5 {
			t.Fatalf("dimensions 8: %v", v)
		}
	})

	t.Run("missing model", func(t *testing.T) {
		_, err := alice.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}})
		var ae *openai.Error
		if !errors.As(err, &ae) || ae.StatusCode != 400 || ae.Type != "invalid_request_error" || !strings.Contains(ae.Message, "model") {
			t.Fatalf("no model: %v", err)
		}
	})

	t.Run("hardening header", func(t *testing.T) {
		var resp *http.Response
		_, err := alice.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "demo",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(100000),
			Logprobs: openai.Bool(true), TopLogprobs: openai.Int(20), LogitBias: map[string]int64{"65": 5}},
			option.WithResponseInto(&resp))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := resp.Header.Get(HardenedHeader), "logit_bias=stripped,top_logprobs=5,max_tokens=4096"; got != want {
			t.Fatalf("%s: %q, want %q", HardenedHeader, got, want)
		}
		_, err = alice.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "demo",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")}, MaxTokens: openai.Int(4)},
			option.WithResponseInto(&resp))
		if err != nil || resp.Header.Get(HardenedHeader) != "" {
			t.Fatalf("nothing hardened, yet %s: %q (%v)", HardenedHeader, resp.Header.Get(HardenedHeader), err)
		}
	})
}

func intBytes(b []int64) []byte {
	out := make([]byte, len(b))
	for i, v := range b {
		out[i] = byte(v)
	}
	return out
}

func norm(v []float64) float64 {
	s := 0.0
	for _, x := range v {
		s += x * x
	}
	return math.Sqrt(s)
}

func slicesEqual(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestHardenedHeaderValue: the header names each field the client sent that hardening
// stripped or lowered, and nothing it added or left alone.
func TestHardenedHeaderValue(t *testing.T) {
	cases := []struct {
		name, body, endpoint string
		h                    Hardening
		want                 string
	}{
		{"nothing", `{"model":"m","max_tokens":10}`, "chat", DefaultHardening(), ""},
		{"default max_tokens added, not reported", `{"model":"m"}`, "chat", DefaultHardening(), ""},
		{"completions logprobs capped", `{"model":"m","prompt":"x","logprobs":9}`, "completions", DefaultHardening(), "logprobs=5"},
		{"logprobs forbidden", `{"model":"m","logprobs":true,"top_logprobs":2}`, "chat",
			Hardening{LogitBias: "strip", MaxTopLogprobs: -1, MaxN: 4, MaxTokens: 64}, "logprobs=stripped,top_logprobs=stripped"},
		{"n and best_of", `{"model":"m","prompt":"x","n":9,"best_of":9}`, "completions", DefaultHardening(), "n=4,best_of=4"},
		{"max_completion_tokens", `{"model":"m","max_completion_tokens":99999}`, "chat", DefaultHardening(), "max_completion_tokens=4096"},
		// An engine may read either field (vLLM's completions only max_tokens): each is capped
		// on its own — a small max_completion_tokens had let a huge max_tokens through.
		{"both, max_tokens over the cap", `{"model":"m","max_completion_tokens":1,"max_tokens":999999}`, "chat", DefaultHardening(), "max_tokens=4096"},
		{"both, completions", `{"model":"m","prompt":"x","max_completion_tokens":1,"max_tokens":999999}`, "completions", DefaultHardening(), "max_tokens=4096"},
		{"both over the cap", `{"model":"m","max_completion_tokens":5000,"max_tokens":6000}`, "chat", DefaultHardening(), "max_tokens=4096,max_completion_tokens=4096"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseRequest([]byte(tc.body), tc.endpoint)
			if err != nil {
				t.Fatal(err)
			}
			before := sent(f)
			if _, err := applyHardening(tc.h, []byte(tc.body), f, tc.endpoint); err != nil {
				t.Fatal(err)
			}
			if got := hardened(before, f); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestLimitsEstimateTakesTheLargerMaxTokens: with both max_completion_tokens and max_tokens,
// admission estimates the larger (an engine may read either): a small max_completion_tokens
// had hidden a max_tokens over the budget.
func TestLimitsEstimateTakesTheLargerMaxTokens(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.KeyLimits = limits.Limits{DailyTokens: 50} })
	url := f.srv.URL + "/v1/chat/completions"
	msg := `"messages":[{"role":"user","content":"hi"}]`
	if resp, _ := post(t, url, f.alice, `{"model":"demo","max_completion_tokens":1,"max_tokens":60,`+msg+`}`); resp.StatusCode != 429 {
		t.Fatalf("max_tokens 60 (max_completion_tokens 1) against a budget of 50: %d", resp.StatusCode)
	}
	if resp, _ := post(t, url, f.alice, `{"model":"demo","max_completion_tokens":1,"max_tokens":20,`+msg+`}`); resp.StatusCode != 200 {
		t.Fatalf("max_tokens 20 against a budget of 50: %d", resp.StatusCode)
	}
}

// TestLimitsCountChoices: admission charges max_tokens once per choice, so n (now served)
// cannot multiply a token budget.
func TestLimitsCountChoices(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.KeyLimits = limits.Limits{DailyTokens: 100} })
	url := f.srv.URL + "/v1/chat/completions"
	msg := `"messages":[{"role":"user","content":"hi"}]`
	if resp, _ := post(t, url, f.alice, `{"model":"demo","max_tokens":30,"n":4,`+msg+`}`); resp.StatusCode != 429 {
		t.Fatalf("4 × 30 tokens against a budget of 100: %d", resp.StatusCode)
	}
	if resp, _ := post(t, url, f.alice, `{"model":"demo","max_tokens":30,`+msg+`}`); resp.StatusCode != 200 {
		t.Fatalf("30 tokens against a budget of 100: %d", resp.StatusCode)
	}
}
