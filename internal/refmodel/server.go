package refmodel

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/strongroom/strongroom/internal/engineauth"
)

// Server is an OpenAI-compatible HTTP server for one model: the dev upstream.
type Server struct {
	Name  string
	LM    LM     // the model served; when nil, Model (the bigram model) is
	Model *Model // nil with LM nil: Fixed answers only
	// Fixed, when set, is the completion text of every answer (load tests: no model work).
	Fixed string
	// Watermark, if set, returns the watermark hook for a tenant (nil: none). The tenant
	// comes from the X-Strongroom-Tenant header, signed by the gateway with APIKey
	// (package engineauth); without APIKey no tenant is believed and nothing is marked.
	Watermark func(tenant string) func(ctx []int, lp []float64)
	// APIKey, if set, is the secret every request must carry as its bearer token.
	APIKey []byte
	Now    func() time.Time
}

type genReq struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string `json:"role"`
		Content any    `json:"content"`
	} `json:"messages"`
	Prompt      any                `json:"prompt"`
	Input       any                `json:"input"`
	MaxTokens   *int               `json:"max_tokens"`
	MaxCompl    *int               `json:"max_completion_tokens"`
	Temperature *float64           `json:"temperature"`
	TopP        *float64           `json:"top_p"`
	Seed        *uint64            `json:"seed"`
	Stream      bool               `json:"stream"`
	Logprobs    json.RawMessage    `json:"logprobs"` // chat: a boolean; completions: a count
	TopLogprobs int                `json:"top_logprobs"`
	LogitBias   map[string]float64 `json:"logit_bias"`
	N           *int               `json:"n"`
	StreamOpts  *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func oaiError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error", "param": nil, "code": nil}})
}

func textOf(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []any:
		var b strings.Builder
		for _, p := range x {
			b.WriteString(textOf(p))
		}
		return b.String()
	case map[string]any:
		return textOf(x["text"])
	}
	return ""
}

// ServeHTTP implements /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(s.APIKey) > 0 && !engineauth.Authorized(r, s.APIKey) {
		oaiError(w, http.StatusUnauthorized, "invalid engine credentials")
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1")
	if path == "/models" {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"object":"list","data":[{"id":%q,"object":"model","created":0,"owned_by":"strongroom-ref"}]}`, s.Name)
		return
	}
	if r.Method != http.MethodPost {
		oaiError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	var req genReq
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 8<<20))
	if err != nil || json.Unmarshal(body, &req) != nil {
		oaiError(w, http.StatusBadRequest, "invalid JSON body")
		return
	}
	if req.Model == "" {
		oaiError(w, http.StatusBadRequest, "you must provide a model parameter")
		return
	}
	if req.Model != s.Name {
		oaiError(w, http.StatusNotFound, "model not found")
		return
	}
	var prompt string
	var msgs []ChatMessage
	switch path {
	case "/chat/completions":
		for _, m := range req.Messages {
			msgs = append(msgs, ChatMessage{Role: m.Role, Content: textOf(m.Content)})
		}
	case "/completions":
		prompt = textOf(req.Prompt)
	case "/embeddings":
		s.embeddings(w, body)
		return
	default:
		oaiError(w, http.StatusNotFound, "unknown endpoint")
		return
	}
	var hook func([]int, []float64)
	if t := r.Header.Get(engineauth.TenantHeader); t != "" {
		if !engineauth.VerifyTenant(s.APIKey, t, r.Header.Get(engineauth.TenantSigHeader), body) {
			oaiError(w, http.StatusUnauthorized, "tenant not signed by the gateway")
			return
		}
		if s.Watermark != nil {
			hook = s.Watermark(t)
		}
	}
	// Say whether the answer carries the mark: greedy decoding (temperature 0, the default
	// here) leaves no detectable green-list bias, so it is not claimed.
	if hook != nil && (req.Temperature == nil || *req.Temperature <= 0) {
		hook = nil
	}
	if hook != nil {
		w.Header().Set(engineauth.WatermarkHeader, "applied")
	} else {
		w.Header().Set(engineauth.WatermarkHeader, "none")
	}
	s.complete(w, &req, path == "/chat/completions", msgs, prompt, hook)
}

func (s *Server) lm() LM {
	if s.LM != nil {
		return s.LM
	}
	if s.Model != nil {
		return bigramLM{s.Model}
	}
	return nil
}

type choiceLogprobs struct {
	Content []tokenLogprob `json:"content"`
}

type tokenLogprob struct {
	Token       string         `json:"token"`
	Logprob     float64        `json:"logprob"`
	Bytes       []int          `json:"bytes"`
	TopLogprobs []tokenLogprob `json:"top_logprobs"`
}

// legacyLogprobs is the completions endpoint's logprobs object: per token its text, its
// logprob, the top alternatives (text → logprob) and its character offset in the
// completion text.
type legacyLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float64            `json:"token_logprobs"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// maxChoices caps n: every choice is a full generation on the CPU.
const maxChoices = 16

// choice is one generated answer.
type choice struct {
	steps []Step
	text  []string // per token
}

// logprobsAsked reads the logprobs member: chat takes a boolean (the count is
// top_logprobs), completions a count of alternatives (0: the sampled token's only).
func logprobsAsked(req *genReq, chat bool) (on bool, top int, err error) {
	raw := strings.TrimSpace(string(req.Logprobs))
	if raw == "" || raw == "null" || raw == "false" {
		return false, 0, nil
	}
	if chat {
		if raw != "true" {
			return false, 0, fmt.Errorf("logprobs must be a boolean")
		}
		return true, req.TopLogprobs, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 0 {
		return false, 0, fmt.Errorf("logprobs must be a non-negative integer for completions")
	}
	return true, n, nil
}

func (s *Server) complete(w http.ResponseWriter, req *genReq, chat bool, msgs []ChatMessage, prompt string, hook func([]int, []float64)) {
	maxTok := 16
	if req.MaxCompl != nil {
		maxTok = *req.MaxCompl
	} else if req.MaxTokens != nil {
		maxTok = *req.MaxTokens
	}
	maxTok = max(0, min(maxTok, 4096))
	wantLogprobs, top, err := logprobsAsked(req, chat)
	if err != nil {
		oaiError(w, http.StatusBadRequest, err.Error())
		return
	}
	top = max(0, min(top, 20))
	nChoices := 1
	if req.N != nil {
		nChoices = *req.N
	}
	if nChoices < 1 || nChoices > maxChoices {
		oaiError(w, http.StatusBadRequest, fmt.Sprintf("n must be from 1 to %d", maxChoices))
		return
	}
	choices := make([]choice, nChoices)
	lm := s.lm()
	promptTokens := (len(prompt) + 3) / 4
	completionTokens := 0
	if s.Fixed != "" || lm == nil {
		for i := range choices {
			choices[i].text = []string{s.Fixed}
		}
		completionTokens = nChoices * ((len(s.Fixed) + 3) / 4)
	} else {
		o := GenOptions{N: maxTok, Top: top, Hook: hook, TopP: 1}
		if req.Temperature != nil {
			o.Temperature = *req.Temperature
		}
		if req.TopP != nil {
			o.TopP = *req.TopP
		}
		if req.Seed != nil {
			o.Seed = *req.Seed
		}
		for k, v := range req.LogitBias {
			if id, err := strconv.Atoi(k); err == nil && id >= 0 && id < lm.Vocab() {
				if o.Bias == nil {
					o.Bias = map[int]float64{}
				}
				o.Bias[id] = max(-100, min(100, v))
			}
		}
		toks := lm.PromptTokens(msgs, prompt, chat)
		promptTokens = len(toks)
		all, err := generateN(lm, toks, o, nChoices)
		if err != nil {
			oaiError(w, http.StatusBadRequest, err.Error())
			return
		}
		for i, steps := range all {
			choices[i].steps = steps
			for _, st := range steps {
				choices[i].text = append(choices[i].text, lm.TokenText(st.Token))
			}
			completionTokens += len(steps)
		}
	}
	finish := func(c *choice) string {
		if len(c.steps) < maxTok && s.Fixed == "" {
			return "stop"
		}
		return "length"
	}
	usage := map[string]int{"prompt_tokens": promptTokens, "completion_tokens": completionTokens, "total_tokens": promptTokens + completionTokens}
	id := fmt.Sprintf("cmpl-%d", s.now().UnixNano())
	created := s.now().Unix()
	obj := "text_completion"
	if chat {
		obj = "chat.completion"
	}
	// logprobs of c's tokens [from, to): chat's content list, or completions' legacy
	// arrays with offsets counted from offset (characters of text before from).
	logprobs := func(c *choice, from, to, offset int) any {
		if !wantLogprobs {
			return nil
		}
		to = min(to, len(c.steps))
		if chat {
			out := &choiceLogprobs{Content: []tokenLogprob{}}
			for i := from; i < to; i++ {
				t := tokenLogprob{Token: c.text[i], Logprob: c.steps[i].Logprob, Bytes: lm.TokenBytes(c.steps[i].Token), TopLogprobs: []tokenLogprob{}}
				for _, a := range c.steps[i].Top {
					t.TopLogprobs = append(t.TopLogprobs, tokenLogprob{Token: lm.TokenText(a.Token), Logprob: a.Logprob, Bytes: lm.TokenBytes(a.Token)})
				}
				out.Content = append(out.Content, t)
			}
			return out
		}
		out := &legacyLogprobs{Tokens: []string{}, TokenLogprobs: []float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
		for i := from; i < to; i++ {
			out.Tokens = append(out.Tokens, c.text[i])
			out.TokenLogprobs = append(out.TokenLogprobs, c.steps[i].Logprob)
			alts := map[string]float64{}
			for _, a := range c.steps[i].Top {
				if t := lm.TokenText(a.Token); !hasKey(alts, t) {
					alts[t] = a.Logprob // two ids of one text: the likelier (Top is sorted)
				}
			}
			out.TopLogprobs = append(out.TopLogprobs, alts)
			out.TextOffset = append(out.TextOffset, offset)
			offset += utf8.RuneCountInString(c.text[i])
		}
		return out
	}
	if !req.Stream {
		out := make([]any, len(choices))
		for i := range choices {
			c := &choices[i]
			full := strings.Join(c.text, "")
			ch := map[string]any{"index": i, "finish_reason": finish(c), "logprobs": logprobs(c, 0, len(c.steps), 0)}
			if chat {
				ch["message"] = map[string]any{"role": "assistant", "content": full}
			} else {
				ch["text"] = full
			}
			out[i] = ch
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"id": id, "object": obj, "created": created, "model": s.Name,
			"choices": out, "usage": usage})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	fl, _ := w.(http.Flusher)
	chunkObj := obj + ".chunk"
	if !chat {
		chunkObj = obj
	}
	send := func(v any) {
		b, _ := json.Marshal(v)
		fmt.Fprintf(w, "data: %s\n\n", b)
		if fl != nil {
			fl.Flush()
		}
	}
	for ci := range choices {
		c := &choices[ci]
		offset := 0
		for i, t := range c.text {
			ch := map[string]any{"index": ci, "finish_reason": nil}
			if chat {
				delta := map[string]any{"content": t}
				if i == 0 {
					delta["role"] = "assistant"
				}
				ch["delta"] = delta
			} else {
				ch["text"] = t
			}
			if l := logprobs(c, i, i+1, offset); l != nil {
				ch["logprobs"] = l
			}
			offset += utf8.RuneCountInString(t)
			send(map[string]any{"id": id, "object": chunkObj, "created": created, "model": s.Name, "choices": []any{ch}})
		}
		final := map[string]any{"index": ci, "finish_reason": finish(c)}
		if chat {
			final["delta"] = map[string]any{}
		} else {
			final["text"] = ""
		}
		send(map[string]any{"id": id, "object": chunkObj, "created": created, "model": s.Name, "choices": []any{final}})
	}
	if req.StreamOpts != nil && req.StreamOpts.IncludeUsage {
		send(map[string]any{"id": id, "object": chunkObj, "created": created, "model": s.Name, "choices": []any{}, "usage": usage})
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	if fl != nil {
		fl.Flush()
	}
}

// generateN samples n continuations, continuation i with seed o.Seed+i (n samples, not n
// copies of one); an LM that can share the prompt's prefill among them does.
func generateN(lm LM, prompt []int, o GenOptions, n int) ([][]Step, error) {
	if g, ok := lm.(interface {
		GenerateN(prompt []int, o GenOptions, n int) ([][]Step, error)
	}); ok {
		return g.GenerateN(prompt, o, n)
	}
	out := make([][]Step, n)
	seed := o.Seed
	for i := range out {
		o.Seed = seed + uint64(i)
		steps, err := lm.Generate(prompt, o)
		if err != nil {
			return nil, err
		}
		out[i] = steps
	}
	return out, nil
}

func hasKey(m map[string]float64, k string) bool { _, ok := m[k]; return ok }
