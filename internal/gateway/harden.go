package gateway

import (
	"strconv"

	"github.com/strongroom/strongroom/internal/modelrec"
)

// Hardening is a model record's request caps (package modelrec).
type Hardening = modelrec.Hardening

// DefaultHardening is what applies when a record sets none.
func DefaultHardening() Hardening { return modelrec.DefaultHardening() }

// applyHardening returns the request body to send upstream: unchanged when nothing needs changing
// (the common case, no re-encoding), else rewritten member by member (request.go). It also
// updates f to what is forwarded, so that f describes the engine's view of the request.
// Streams get include_usage so that tokens can be counted.
func applyHardening(h Hardening, body []byte, f *features, endpoint string) ([]byte, error) {
	var edits []edit
	set := func(name string, v int) { edits = append(edits, edit{name, strconv.AppendInt(nil, int64(v), 10)}) }
	drop := func(names ...string) {
		for _, n := range names {
			edits = append(edits, edit{name: n})
		}
	}
	if len(f.LogitBias) > 0 {
		switch h.LogitBias {
		case "reject":
			return nil, badRequest("logit_bias is not permitted for this model.")
		case "allow":
		default:
			drop("logit_bias")
			f.LogitBias = nil
		}
	}
	// Prompt logprobs (vLLM's prompt_logprobs) leak the same information for every prompt
	// token: forbidden and capped with the others.
	if on, _ := f.logprobs(); on && h.MaxTopLogprobs < 0 {
		drop("logprobs", "top_logprobs", "prompt_logprobs")
		f.LogprobsOn, f.LogprobsN, f.TopLogprobs, f.PromptLogprobs = false, nil, nil, nil
	}
	for _, c := range []struct {
		name string
		v    *int
	}{{"logprobs", f.LogprobsN}, {"top_logprobs", f.TopLogprobs}, {"prompt_logprobs", f.PromptLogprobs}} {
		if c.v != nil && h.MaxTopLogprobs >= 0 && *c.v > h.MaxTopLogprobs {
			set(c.name, h.MaxTopLogprobs)
			*c.v = h.MaxTopLogprobs
		}
	}
	for _, c := range []struct {
		name string
		v    *int
	}{{"n", f.N}, {"best_of", f.BestOf}} {
		if c.v != nil && h.MaxN > 0 && *c.v > h.MaxN {
			set(c.name, h.MaxN)
			*c.v = h.MaxN
		}
	}
	if h.MaxTokens > 0 && endpoint != "embeddings" {
		// Each field the request has is capped on its own (an engine may read either), and a
		// request with neither gets max_tokens.
		if p := f.MaxCompl; p != nil && (*p == 0 || *p > h.MaxTokens) {
			set("max_completion_tokens", h.MaxTokens)
			*p = h.MaxTokens
		}
		if p := f.MaxTokens; p != nil && (*p == 0 || *p > h.MaxTokens) {
			set("max_tokens", h.MaxTokens)
			*p = h.MaxTokens
		}
		if f.MaxCompl == nil && f.MaxTokens == nil {
			set("max_tokens", h.MaxTokens)
			v := h.MaxTokens
			f.MaxTokens = &v
		}
	}
	if f.Stream && !f.IncludeUsage {
		edits = append(edits, edit{"stream_options", []byte(`{"include_usage":true}`)})
	}
	if len(edits) == 0 {
		return body, nil
	}
	return f.rewrite(body, edits), nil
}
