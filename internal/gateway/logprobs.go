package gateway

import (
	"strings"

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

// rewrite shapes every log-probability in an answer or stream chunk, wherever an
// OpenAI-compatible engine puts one: any number whose key, or the key of an array or map
// it sits in, names logprobs in any case (chat's logprobs.content[].logprob and
// top_logprobs, logprobs.refusal, completions' token_logprobs and top_logprobs maps,
// vLLM's prompt_logprobs at the top or per choice, a "Logprobs" a case-blind decoder
// reads) — but not the fields there that are no log-probability (notLogprob: ranks, token
// ids, byte values, offsets). The answer is re-encoded from what was parsed, changed or
// not: bytes the parser dropped (a duplicated key's other value) never go out. ok is false
// when body is not a JSON object: the caller must not relay it.
func (s *logprobShaper) rewrite(body []byte) (out []byte, ok bool) {
	var doc map[string]any
	if json.Unmarshal(body, &doc) != nil {
		return body, false
	}
	s.walk(doc, false, 0, "")
	out, err := json.Marshal(doc)
	if err != nil {
		return body, false
	}
	return out, true
}

// walk shapes the numbers under v; under: a key on the way names logprobs; pos and tok:
// the nearest array index and token (a "token" or "decoded_token" beside it, or the key
// of a token-to-logprob map), which key the noise.
func (s *logprobShaper) walk(v any, under bool, pos int, tok string) any {
	switch x := v.(type) {
	case map[string]any:
		if t, ok := x["token"].(string); ok {
			tok = t
		} else if t, ok := x["decoded_token"].(string); ok {
			tok = t
		}
		for k, c := range x {
			lk := strings.ToLower(k)
			if notLogprob[lk] {
				continue
			}
			named := strings.Contains(lk, "logprob")
			ctok := tok
			if under && !named {
				ctok = k // a map of token (or token id) to its logprob
			}
			x[k] = s.walk(c, under || named, pos, ctok)
		}
	case []any:
		for i, c := range x {
			x[i] = s.walk(c, under, i, tok)
		}
	case float64:
		if under {
			return s.shape(x, pos, tok)
		}
	}
	return v
}

// notLogprob are the fields beside logprobs that hold other numbers.
var notLogprob = map[string]bool{"rank": true, "bytes": true, "text_offset": true, "token_id": true, "token_ids": true, "index": true, "id": true}
