package gateway

import (
	"encoding/json"
	"fmt"
)

// Hardening caps the request features used for logit-based extraction (Carlini et al. 2024,
// "Stealing Part of a Production Language Model"; Finlayson et al. 2024): logit_bias,
// logprobs and top_logprobs, n and max_tokens.
type Hardening struct {
	// LogitBias: "reject" (400), "strip" (removed silently) or "allow".
	LogitBias string `json:"logit_bias"`
	// MaxTopLogprobs caps top_logprobs; -1 forbids logprobs altogether (stripped).
	MaxTopLogprobs int `json:"max_top_logprobs"`
	MaxN           int `json:"max_n"`
	MaxTokens      int `json:"max_tokens"`
	// RoundLogprobs rounds returned logprobs to this many decimals (0: off).
	RoundLogprobs int `json:"round_logprobs,omitempty"`
	// LogprobNoise adds Gaussian noise of this standard deviation (nats) to returned
	// logprobs, the same for a repeated query so that averaging does not remove it (0: off).
	LogprobNoise float64 `json:"logprob_noise,omitempty"`
}

// DefaultHardening is what applies when a route sets none.
func DefaultHardening() Hardening {
	return Hardening{LogitBias: "strip", MaxTopLogprobs: 5, MaxN: 4, MaxTokens: 4096}
}

// features are the request fields that policy, limits and hardening look at.
type features struct {
	Model       string             `json:"model"`
	Stream      bool               `json:"stream"`
	MaxTokens   *int               `json:"max_tokens"`
	MaxCompl    *int               `json:"max_completion_tokens"`
	N           *int               `json:"n"`
	Logprobs    json.RawMessage    `json:"logprobs"` // bool (chat) or int (completions)
	TopLogprobs *int               `json:"top_logprobs"`
	LogitBias   map[string]float64 `json:"logit_bias"`
	StreamOpts  *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	// The prompt-bearing field of each endpoint, kept raw (one parse of the body serves all).
	Messages json.RawMessage `json:"messages"`
	Prompt   json.RawMessage `json:"prompt"`
	Input    json.RawMessage `json:"input"`
}

// prompt returns the raw JSON of the prompt-bearing field.
func (f *features) prompt() []byte {
	switch {
	case f.Messages != nil:
		return f.Messages
	case f.Prompt != nil:
		return f.Prompt
	}
	return f.Input
}

func (f *features) logprobs() (bool, int) {
	switch string(f.Logprobs) {
	case "", "null", "false", "0":
		return false, 0
	case "true":
		top := 0
		if f.TopLogprobs != nil {
			top = *f.TopLogprobs
		}
		return true, top
	}
	var n int
	if json.Unmarshal(f.Logprobs, &n) == nil { // completions: logprobs is the count
		return n > 0, n
	}
	return true, 0
}

func (f *features) maxTokens() int {
	switch {
	case f.MaxCompl != nil:
		return *f.MaxCompl
	case f.MaxTokens != nil:
		return *f.MaxTokens
	}
	return 0
}

// apply returns the request body to send upstream: unchanged when nothing needs changing
// (the common case, no re-encoding), else rewritten. forceUsage asks the upstream for a
// usage block in streams so that tokens can be counted.
func (h Hardening) apply(body []byte, f *features, endpoint string) ([]byte, error) {
	edits := map[string]any{}
	if len(f.LogitBias) > 0 {
		switch h.LogitBias {
		case "reject":
			return nil, badRequest("logit_bias is not permitted for this model.")
		case "allow":
		default:
			edits["logit_bias"] = nil
		}
	}
	if on, top := f.logprobs(); on {
		switch {
		case h.MaxTopLogprobs < 0:
			edits["logprobs"], edits["top_logprobs"] = nil, nil
		case endpoint == "completions" && top > h.MaxTopLogprobs:
			edits["logprobs"] = h.MaxTopLogprobs
		case top > h.MaxTopLogprobs:
			edits["top_logprobs"] = h.MaxTopLogprobs
		}
	}
	if f.N != nil && h.MaxN > 0 && *f.N > h.MaxN {
		edits["n"] = h.MaxN
	}
	if mt := f.maxTokens(); h.MaxTokens > 0 && (mt == 0 || mt > h.MaxTokens) && endpoint != "embeddings" {
		if f.MaxCompl != nil {
			edits["max_completion_tokens"] = h.MaxTokens
		} else {
			edits["max_tokens"] = h.MaxTokens
		}
	}
	if f.Stream && (f.StreamOpts == nil || !f.StreamOpts.IncludeUsage) {
		edits["stream_options"] = map[string]bool{"include_usage": true}
	}
	if len(edits) == 0 {
		return body, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, badRequest("Request body is not a JSON object.")
	}
	for k, v := range edits {
		if v == nil {
			delete(m, k)
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("harden: %w", err)
		}
		m[k] = b
	}
	return json.Marshal(m)
}
