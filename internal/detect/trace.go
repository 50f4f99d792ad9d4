// Package detect watches the request stream for model extraction and abuse — logit
// harvesting, perturbation probing, egress anomalies, distillation, and distributed
// ("hydra") campaigns over many keys — scores each principal with bounded state and O(1)
// amortized work per request (campaign clustering runs off the hot path), and turns
// alerts into responses: audit events, incidents, webhooks and sanctions.
//
// # Request Trace Format
//
// One request per line (JSONL), as in DESIGN.md:
//
//	{"ts":RFC3339Nano,"principal":"...","ip":"...","model":"...","endpoint":"chat|completions|embeddings",
//	 "prompt":"...","params":{"max_tokens":N,"logprobs":bool,"top_logprobs":N,
//	 "logit_bias":{"tokenid":bias},"temperature":x,"n":N},"prompt_tokens":N,
//	 "completion_tokens":N,"label":"optional ground truth, ignored by replay"}
//
// Alerts are printed as {"principal":"...","detector":"...","index":N,"ts":...,"score":x,
// "action":"..."}, index being the 0-based line of the first request that raised it.
package detect

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/strongroom/strongroom/internal/obs"
)

// MaxLine caps one trace line.
const MaxLine = 1 << 20

// Params are the sampling parameters that matter for extraction.
type Params struct {
	MaxTokens   int                `json:"max_tokens,omitempty"`
	Logprobs    bool               `json:"logprobs,omitempty"`
	TopLogprobs int                `json:"top_logprobs,omitempty"`
	LogitBias   map[string]float64 `json:"logit_bias,omitempty"`
	Temperature float64            `json:"temperature,omitempty"`
	N           int                `json:"n,omitempty"`
}

// Request is one line of a trace, and what the gateway hands the detectors.
type Request struct {
	TS               time.Time `json:"ts"`
	Principal        string    `json:"principal"`
	IP               string    `json:"ip,omitempty"`
	Model            string    `json:"model"`
	Endpoint         string    `json:"endpoint"`
	Prompt           string    `json:"prompt"`
	Params           Params    `json:"params"`
	PromptTokens     int       `json:"prompt_tokens"`
	CompletionTokens int       `json:"completion_tokens"`
	Label            string    `json:"label,omitempty"`
}

// Alert is a detector's finding about a principal.
type Alert struct {
	Principal string     `json:"principal"`
	Detector  string     `json:"detector"`
	Index     int        `json:"index"`
	TS        time.Time  `json:"ts"`
	Score     float64    `json:"score"`
	Action    obs.Action `json:"action"`
	Step      int        `json:"step,omitempty"` // 1 for the detector's first alert on the principal, 2 for the next…
	Evidence  string     `json:"evidence,omitempty"`
}

// ReadTrace calls fn for every request of a JSONL trace, with its line index.
func ReadTrace(r io.Reader, fn func(i int, req *Request) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLine)
	for i := 0; sc.Scan(); i++ {
		var req Request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return fmt.Errorf("trace line %d: %w", i+1, err)
		}
		if req.Principal == "" || req.TS.IsZero() {
			return fmt.Errorf("trace line %d: principal and ts are required", i+1)
		}
		if err := fn(i, &req); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("trace: a line is longer than %d bytes", MaxLine)
		}
		return err
	}
	return nil
}
