package refmodel

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
)

// Model is the reference runtime's model: a byte-level bigram language model whose next
// token scores are embed[last] · lm_head[v] over the synthesized weights. It is small and
// deterministic, but its weights, logits and logprobs are real, which is what the gateway,
// the extraction detectors and the watermarks need from a dev upstream.
type Model struct {
	vocab, hidden int
	embed, head   []float32
}

// LoadModel reads embed.weight and lm_head.weight from safetensors bytes (a sealed file's
// ReaderAt in production).
func LoadModel(r io.ReaderAt, size int64) (*Model, error) {
	st, err := OpenSafetensors(r, size)
	if err != nil {
		return nil, err
	}
	embed, es, err := st.F32("embed.weight")
	if err != nil {
		return nil, err
	}
	head, hs, err := st.F32("lm_head.weight")
	if err != nil {
		return nil, err
	}
	if len(es) != 2 || len(hs) != 2 || es[0] != hs[0] || es[1] != hs[1] || es[0] < 2 {
		return nil, errors.New("refmodel: embed and lm_head shapes disagree")
	}
	return &Model{vocab: int(es[0]), hidden: int(es[1]), embed: embed, head: head}, nil
}

// Vocab is the vocabulary size; tokens are bytes modulo it.
func (m *Model) Vocab() int { return m.vocab }

// Logprobs returns log-softmax scores of the next token after last, at temperature t, with
// bias (token -> added logit, OpenAI's logit_bias) applied before the softmax.
func (m *Model) Logprobs(last int, t float64, bias map[int]float64, out []float64) []float64 {
	out = out[:0]
	e := m.embed[(last%m.vocab)*m.hidden : (last%m.vocab+1)*m.hidden]
	maxv := math.Inf(-1)
	for v := range m.vocab {
		h := m.head[v*m.hidden : (v+1)*m.hidden]
		var s float32
		for i := range e {
			s += e[i] * h[i]
		}
		x := float64(s)*8/max(t, 1e-3) + bias[v]
		out = append(out, x)
		maxv = max(maxv, x)
	}
	var z float64
	for _, x := range out {
		z += math.Exp(x - maxv)
	}
	lz := maxv + math.Log(z)
	for i := range out {
		out[i] -= lz
	}
	return out
}

// Step is one generated token with its logprob and the top alternatives.
type Step struct {
	Token   int
	Logprob float64
	Top     []Alt
}

// Alt is an alternative token and its logprob.
type Alt struct {
	Token   int
	Logprob float64
}

// Generate continues prompt for n tokens. Temperature 0 is greedy; otherwise sampling with
// the given seed. top is how many alternatives to report per step.
func (m *Model) Generate(prompt []byte, n int, temperature float64, seed uint64, top int, bias map[int]float64) []Step {
	last := 0
	if len(prompt) > 0 {
		last = int(prompt[len(prompt)-1])
	}
	rng := rand.New(rand.NewPCG(seed, uint64(len(prompt))))
	lp := make([]float64, 0, m.vocab)
	steps := make([]Step, 0, n)
	for range n {
		lp = m.Logprobs(last, max(temperature, 1), bias, lp)
		tok := 0
		if temperature <= 0 {
			for v := range lp {
				if lp[v] > lp[tok] {
					tok = v
				}
			}
		} else {
			u, acc := rng.Float64(), 0.0
			for v := range lp {
				acc += math.Exp(lp[v])
				if u <= acc {
					tok = v
					break
				}
				tok = v
			}
		}
		s := Step{Token: tok, Logprob: lp[tok]}
		for range min(top, m.vocab) {
			best := -1
			for v := range lp {
				if (best < 0 || lp[v] > lp[best]) && !hasAlt(s.Top, v) {
					best = v
				}
			}
			s.Top = append(s.Top, Alt{Token: best, Logprob: lp[best]})
		}
		steps = append(steps, s)
		last = tok
	}
	return steps
}

func hasAlt(a []Alt, v int) bool {
	for _, x := range a {
		if x.Token == v {
			return true
		}
	}
	return false
}

// TokenText renders a token as printable text: letters, digits and space map to themselves,
// other bytes to a letter, so that answers are readable.
func TokenText(tok int) string {
	b := byte(tok)
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == ' ':
		return string(b)
	}
	return fmt.Sprintf("%c", 'a'+b%26)
}
