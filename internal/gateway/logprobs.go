package gateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"math"
)

// logprobShaper rounds logprobs and adds noise that is deterministic per (key, principal,
// prompt, position, token): repeating a query returns the same noisy value, so averaging
// does not remove it.
type logprobShaper struct {
	decimals int
	sigma    float64
	key      []byte
	ctx      []byte // principal and prompt digest
}

func (s *logprobShaper) noise(pos int, token string) float64 {
	if s.sigma == 0 {
		return 0
	}
	m := hmac.New(sha256.New, s.key)
	m.Write(s.ctx)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(pos))
	m.Write(b[:])
	m.Write([]byte(token))
	sum := m.Sum(nil)
	u1 := (float64(binary.BigEndian.Uint64(sum[0:8])>>11) + 0.5) / (1 << 53)
	u2 := float64(binary.BigEndian.Uint64(sum[8:16])>>11) / (1 << 53)
	return s.sigma * math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
}

func (s *logprobShaper) shape(v float64, pos int, token string) float64 {
	v += s.noise(pos, token)
	v = math.Min(v, 0) // still a log-probability
	if s.decimals > 0 {
		p := math.Pow(10, float64(s.decimals))
		v = math.Round(v*p) / p
	}
	return v
}

// rewrite applies the shaper to every logprob in an OpenAI response or stream chunk (chat:
// choices[].logprobs.content[].logprob and its top_logprobs; completions:
// choices[].logprobs.token_logprobs and top_logprobs maps). ok is false when body is not
// a JSON object: the caller must not relay it (its logprobs, if any, are unshaped).
func (s *logprobShaper) rewrite(body []byte) (out []byte, ok bool) {
	var doc map[string]any
	if json.Unmarshal(body, &doc) != nil {
		return body, false
	}
	choices, _ := doc["choices"].([]any)
	changed := false
	for _, c := range choices {
		ch, _ := c.(map[string]any)
		lp, _ := ch["logprobs"].(map[string]any)
		if lp == nil {
			continue
		}
		if content, ok := lp["content"].([]any); ok { // chat
			for pos, it := range content {
				e, _ := it.(map[string]any)
				if v, ok := e["logprob"].(float64); ok {
					tok, _ := e["token"].(string)
					e["logprob"], changed = s.shape(v, pos, tok), true
				}
				tops, _ := e["top_logprobs"].([]any)
				for _, t := range tops {
					te, _ := t.(map[string]any)
					if v, ok := te["logprob"].(float64); ok {
						tok, _ := te["token"].(string)
						te["logprob"] = s.shape(v, pos, tok)
					}
				}
			}
		}
		if tl, ok := lp["token_logprobs"].([]any); ok { // completions
			toks, _ := lp["tokens"].([]any)
			for pos, v := range tl {
				if f, ok := v.(float64); ok {
					tok := ""
					if pos < len(toks) {
						tok, _ = toks[pos].(string)
					}
					tl[pos], changed = s.shape(f, pos, tok), true
				}
			}
			tops, _ := lp["top_logprobs"].([]any)
			for pos, t := range tops {
				m, _ := t.(map[string]any)
				for tok, v := range m {
					if f, ok := v.(float64); ok {
						m[tok] = s.shape(f, pos, tok)
					}
				}
			}
		}
	}
	if !changed {
		return body, true
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return body, false
	}
	return out, true
}
