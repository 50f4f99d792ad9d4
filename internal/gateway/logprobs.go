package gateway

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"math"
	"strings"
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
// OpenAI-compatible engine puts one: every number under a key that names logprobs in any
// case (chat's logprobs.content[].logprob and top_logprobs, logprobs.refusal, completions'
// token_logprobs and top_logprobs maps, vLLM's prompt_logprobs at the top or per choice, a
// "Logprobs" a case-blind decoder reads), but the non-negative integers written as such
// there — ranks, token ids, byte values, offsets; a log-probability is a float at most 0.
// Fields are not told apart by name: a token-to-logprob map's keys are tokens, and a
// client can make the model emit a token named "rank". The answer is re-encoded from what
// was parsed, changed or not: bytes the parser dropped (a duplicated key's other value)
// never go out. ok is false when body is not a JSON object: the caller must not relay it.
func (s *logprobShaper) rewrite(body []byte) (out []byte, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	if dec.Decode(&doc) != nil || dec.InputOffset() != int64(len(bytes.TrimRight(body, " \t\r\n"))) {
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
			named := strings.Contains(strings.ToLower(k), "logprob")
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
	case json.Number:
		if !under || counting(string(x)) {
			return x // written back as it was read
		}
		f, err := x.Float64()
		if err != nil {
			return math.Inf(-1) // beyond float64: json.Marshal refuses it, the answer is not relayed
		}
		return s.shape(f, pos, tok)
	}
	return v
}

// counting reports whether a JSON number is written as a non-negative integer (a rank, an
// id, a byte, an offset — never a log-probability, which engines write as floats ≤ 0).
func counting(n string) bool {
	for i := 0; i < len(n); i++ {
		if n[i] < '0' || n[i] > '9' {
			return false
		}
	}
	return n != ""
}
