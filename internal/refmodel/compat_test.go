package refmodel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

func llamaClient(t *testing.T) openai.Client {
	srv := llamaServer(t)
	return openai.NewClient(option.WithBaseURL(srv.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
}

// TestLlamaOpenAICompat: the reference runtime over the tiny transformer, through the
// official client: completions logprobs in the legacy shape (multi-character tokens, so
// offsets count), top_logprobs naming real tokens with their bytes, n samples, pooled
// embeddings, and a missing model refused with 400.
func TestLlamaOpenAICompat(t *testing.T) {
	c := llamaClient(t)
	ctx := context.Background()

	comp, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: "tiny",
		Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("the model weights")}, MaxTokens: openai.Int(8), Logprobs: openai.Int(2)})
	if err != nil {
		t.Fatal(err)
	}
	lp := comp.Choices[0].Logprobs
	if len(lp.Tokens) == 0 || len(lp.Tokens) != int(comp.Usage.CompletionTokens) || strings.Join(lp.Tokens, "") != comp.Choices[0].Text {
		t.Fatalf("tokens %q, text %q, usage %+v", lp.Tokens, comp.Choices[0].Text, comp.Usage)
	}
	off := 0
	for i, tok := range lp.Tokens {
		if int(lp.TextOffset[i]) != off || len(lp.TopLogprobs[i]) == 0 || len(lp.TopLogprobs[i]) > 2 {
			t.Fatalf("token %d %q: offset %d want %d, top %v", i, tok, lp.TextOffset[i], off, lp.TopLogprobs[i])
		}
		for alt := range lp.TopLogprobs[i] {
			if alt == "" {
				t.Fatalf("token %d: an alternative without text: %v", i, lp.TopLogprobs[i])
			}
		}
		off += utf8.RuneCountInString(tok)
	}

	chat, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "tiny",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("the model weights")}, MaxTokens: openai.Int(6),
		Logprobs: openai.Bool(true), TopLogprobs: openai.Int(5)})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range chat.Choices[0].Logprobs.Content {
		if len(e.TopLogprobs) != 5 {
			t.Fatalf("%d alternatives", len(e.TopLogprobs))
		}
		for _, a := range e.TopLogprobs {
			b := make([]byte, len(a.Bytes))
			for i, v := range a.Bytes {
				b[i] = byte(v)
			}
			// The token is its bytes as text (invalid UTF-8 shows as U+FFFD, as OpenAI's does).
			if a.Token == "" || len(b) == 0 || strings.ToValidUTF8(string(b), "\uFFFD") != a.Token {
				t.Fatalf("alternative %q with bytes %v", a.Token, a.Bytes)
			}
		}
	}

	n, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "tiny",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("the model weights")}, MaxTokens: openai.Int(6),
		N: openai.Int(3), Temperature: openai.Float(1), Seed: openai.Int(7)})
	if err != nil || len(n.Choices) != 3 || n.Choices[2].Index != 2 {
		t.Fatalf("n=3: %v %+v", err, n)
	}
	if n.Choices[0].Message.Content == n.Choices[1].Message.Content && n.Choices[1].Message.Content == n.Choices[2].Message.Content {
		t.Fatalf("three samples, one answer: %q", n.Choices[0].Message.Content)
	}

	emb, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "tiny",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"the model weights", "sealed keys"}}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := emb.Data[0].Embedding, emb.Data[1].Embedding
	dot, na := 0.0, 0.0
	for k := range a {
		dot, na = dot+a[k]*b[k], na+a[k]*a[k]
	}
	if len(a) != 64 || math.Abs(na-1) > 1e-4 || dot > 0.99999 {
		t.Fatalf("embedding: %d dims, |a|² %g, a·b %g", len(a), na, dot)
	}
	// Token ids are an input too: the text's own tokens give its vector.
	lm, _ := LoadLlamaLM("testdata/tiny-f32")
	toks := lm.PromptTokens(nil, "the model weights", false)
	ids := make([]int64, len(toks))
	for i, t := range toks {
		ids[i] = int64(t)
	}
	byIDs, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "tiny", Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfTokens: ids}})
	if err != nil || byIDs.Data[0].Embedding[5] != a[5] {
		t.Fatalf("by token ids: %v", err)
	}

	_, err = c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
	var ae *openai.Error
	if !errors.As(err, &ae) || ae.StatusCode != 400 {
		t.Fatalf("no model: %v", err)
	}
}

// TestRefusals: what the runtime cannot serve is a 400 in OpenAI's shape, never a silent
// substitute.
func TestRefusals(t *testing.T) {
	srv := llamaServer(t)
	for _, tc := range []struct{ path, body string }{
		{"/v1/chat/completions", `{"model":"tiny","n":0,"messages":[{"role":"user","content":"x"}]}`},
		{"/v1/chat/completions", `{"model":"tiny","n":17,"messages":[{"role":"user","content":"x"}]}`},
		{"/v1/chat/completions", `{"model":"tiny","logprobs":3,"messages":[{"role":"user","content":"x"}]}`},
		{"/v1/completions", `{"model":"tiny","logprobs":true,"prompt":"x"}`},
		{"/v1/embeddings", `{"model":"tiny","input":""}`},
		{"/v1/embeddings", `{"model":"tiny","input":[]}`},
		{"/v1/embeddings", `{"model":"tiny","input":[999999]}`},
		{"/v1/embeddings", `{"model":"tiny","input":"x","encoding_format":"int8"}`},
		{"/v1/embeddings", `{"model":"tiny","input":"x","dimensions":65}`},
		{"/v1/embeddings", `{"input":"x"}`},
	} {
		resp, err := http.Post(srv.URL+tc.path, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error struct{ Message, Type string }
		}
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
			t.Errorf("%s %s: %d %+v", tc.path, tc.body, resp.StatusCode, e)
		}
	}
}

// FuzzEmbedInput: any input member parses or is refused; never a panic, never an empty
// input accepted.
func FuzzEmbedInput(f *testing.F) {
	for _, s := range []string{`"x"`, `["a","b"]`, `[1,2,3]`, `[[1],[2,3]]`, `[]`, `[[]]`, `null`, `[1,"a"]`, `{"a":1}`, `[-1]`, `1e400`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		in, err := parseEmbedInput(raw)
		if err != nil {
			return
		}
		if len(in) == 0 || len(in) > maxEmbedInputs {
			t.Fatalf("%d inputs from %q", len(in), raw)
		}
		for _, x := range in {
			if x.isText && x.text == "" || !x.isText && len(x.tokens) == 0 {
				t.Fatalf("empty input accepted from %q", raw)
			}
		}
	})
}

// FuzzServer: any request body to any endpoint of the bigram runtime gets an answer that
// is JSON (or an event stream), never a panic.
func FuzzServer(f *testing.F) {
	srv := &Server{Name: "m", Model: fuzzModel(f)}
	paths := []string{"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models"}
	for _, s := range []string{
		`{"model":"m","prompt":"abc","logprobs":2,"n":2,"max_tokens":3}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":3,"n":2,"stream":true,"max_tokens":2}`,
		`{"model":"m","input":["a",[1,2]],"encoding_format":"base64","dimensions":4}`,
		`{"model":"m","input":[[300]]}`,
	} {
		for p := range paths {
			f.Add(uint8(p), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, p uint8, body []byte) {
		path := paths[int(p)%len(paths)]
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "http://x"+path, bytes.NewReader(body)))
		if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %q: invalid JSON answer %q", path, body, rec.Body.Bytes())
		}
	})
}

func fuzzModel(f *testing.F) *Model {
	dir := f.TempDir()
	if err := Synthesize(dir, DefaultSynth()); err != nil {
		f.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		f.Fatal(err)
	}
	m, err := LoadModel(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		f.Fatal(err)
	}
	return m
}

// TestGenerateNSharesPrefill: n continuations from one prefill are exactly what n separate
// generations with seeds seed, seed+1, … give.
func TestGenerateNSharesPrefill(t *testing.T) {
	lm, err := LoadLlamaLM(filepath.Join("testdata", "tiny-f32"))
	if err != nil {
		t.Fatal(err)
	}
	prompt := lm.PromptTokens([]ChatMessage{{Role: "user", Content: "the model weights"}}, "", true)
	o := GenOptions{N: 6, Temperature: 1, TopP: 1, Seed: 3, Top: 2}
	got, err := lm.GenerateN(prompt, o, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		oi := o
		oi.Seed += uint64(i)
		want, err := lm.Generate(prompt, oi)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got[i]); diff != "" {
			t.Fatalf("continuation %d (-separate +shared):\n%s", i, diff)
		}
	}
}
