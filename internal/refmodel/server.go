package refmodel

import (
	"io"

	"encoding/json"
	"fmt"
	"github.com/strongroom/strongroom/internal/engineauth"
	"net/http"
	"strconv"
	"strings"
	"time"
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
	Logprobs    any                `json:"logprobs"`
	TopLogprobs int                `json:"top_logprobs"`
	LogitBias   map[string]float64 `json:"logit_bias"`
	N           int                `json:"n"`
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
		s.embeddings(w, textOf(req.Input))
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

func (s *Server) embeddings(w http.ResponseWriter, input string) {
	vec := make([]float64, 16)
	if s.Model != nil && len(input) > 0 {
		e := s.Model.embed[(int(input[len(input)-1])%s.Model.vocab)*s.Model.hidden:]
		for i := range vec {
			vec[i] = float64(e[i%s.Model.hidden])
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"object": "list", "model": s.Name,
		"data":  []any{map[string]any{"object": "embedding", "index": 0, "embedding": vec}},
		"usage": map[string]int{"prompt_tokens": len(input), "total_tokens": len(input)}})
}

type choiceLogprobs struct {
	Content []tokenLogprob `json:"content"`
}

type tokenLogprob struct {
	Token       string         `json:"token"`
	Logprob     float64        `json:"logprob"`
	Bytes       []int          `json:"bytes"`
	TopLogprobs []tokenLogprob `json:"top_logprobs,omitempty"`
}

func (s *Server) complete(w http.ResponseWriter, req *genReq, chat bool, msgs []ChatMessage, prompt string, hook func([]int, []float64)) {
	n := 16
	if req.MaxCompl != nil {
		n = *req.MaxCompl
	} else if req.MaxTokens != nil {
		n = *req.MaxTokens
	}
	n = max(0, min(n, 4096))
	var text []string
	var steps []Step
	lm := s.lm()
	promptTokens := (len(prompt) + 3) / 4
	if s.Fixed != "" || lm == nil {
		text = []string{s.Fixed}
	} else {
		o := GenOptions{N: n, Top: min(req.TopLogprobs, 20), Hook: hook, TopP: 1}
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
		var err error
		if steps, err = lm.Generate(toks, o); err != nil {
			oaiError(w, http.StatusBadRequest, err.Error())
			return
		}
		for _, st := range steps {
			text = append(text, lm.TokenText(st.Token))
		}
	}
	finish := "length"
	if len(steps) < n && s.Fixed == "" {
		finish = "stop"
	}
	wantLogprobs := req.Logprobs == true || (req.Logprobs != nil && req.Logprobs != false)
	usage := map[string]int{"prompt_tokens": promptTokens, "completion_tokens": len(text), "total_tokens": promptTokens + len(text)}
	if s.Fixed != "" {
		usage["completion_tokens"] = (len(s.Fixed) + 3) / 4
		usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
	}
	id := fmt.Sprintf("cmpl-%d", s.now().UnixNano())
	created := s.now().Unix()
	obj := "text_completion"
	if chat {
		obj = "chat.completion"
	}
	lp := func(i int) *choiceLogprobs {
		if !wantLogprobs || i >= len(steps) {
			return nil
		}
		t := tokenLogprob{Token: text[i], Logprob: steps[i].Logprob, Bytes: lm.TokenBytes(steps[i].Token)}
		for _, a := range steps[i].Top {
			t.TopLogprobs = append(t.TopLogprobs, tokenLogprob{Token: lm.TokenText(a.Token), Logprob: a.Logprob, Bytes: lm.TokenBytes(a.Token)})
		}
		return &choiceLogprobs{Content: []tokenLogprob{t}}
	}
	if !req.Stream {
		full := strings.Join(text, "")
		choice := map[string]any{"index": 0, "finish_reason": finish}
		if chat {
			choice["message"] = map[string]any{"role": "assistant", "content": full}
			if wantLogprobs {
				all := &choiceLogprobs{}
				for i := range steps {
					all.Content = append(all.Content, lp(i).Content...)
				}
				choice["logprobs"] = all
			}
		} else {
			choice["text"] = full
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"id": id, "object": obj, "created": created, "model": s.Name,
			"choices": []any{choice}, "usage": usage})
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
	for i, t := range text {
		choice := map[string]any{"index": 0, "finish_reason": nil}
		if chat {
			delta := map[string]any{"content": t}
			if i == 0 {
				delta["role"] = "assistant"
			}
			choice["delta"] = delta
			if l := lp(i); l != nil {
				choice["logprobs"] = l
			}
		} else {
			choice["text"] = t
		}
		send(map[string]any{"id": id, "object": chunkObj, "created": created, "model": s.Name, "choices": []any{choice}})
	}
	final := map[string]any{"index": 0, "finish_reason": finish}
	if chat {
		final["delta"] = map[string]any{}
	} else {
		final["text"] = ""
	}
	send(map[string]any{"id": id, "object": chunkObj, "created": created, "model": s.Name, "choices": []any{final}})
	if req.StreamOpts != nil && req.StreamOpts.IncludeUsage {
		send(map[string]any{"id": id, "object": chunkObj, "created": created, "model": s.Name, "choices": []any{}, "usage": usage})
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	if fl != nil {
		fl.Flush()
	}
}
