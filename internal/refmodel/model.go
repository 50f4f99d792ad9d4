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

// Printable reports whether a token renders as itself: sampling is restricted to these, so
// that text maps back to tokens exactly (Tokenize), which watermark detection needs.
// Reported logprobs are the model's own, over the whole vocabulary.
func Printable(tok int) bool { return tok >= 32 && tok < 127 }

// Tokenize maps text back to tokens (the inverse of TokenText for generated text).
func Tokenize(text string) []int {
	out := make([]int, len(text))
	for i := 0; i < len(text); i++ {
		out[i] = int(text[i])
	}
	return out
}

// Generate continues prompt for n tokens. Temperature 0 is greedy; otherwise sampling with
// the given seed. top is how many alternatives to report per step. hook, if set, may change
// the sampling log-probabilities (a watermark) after the previous token.
func (m *Model) Generate(prompt []byte, n int, temperature float64, seed uint64, top int, bias map[int]float64, hook func(prev int, lp []float64)) []Step {
	last := 0
	if len(prompt) > 0 {
		last = int(prompt[len(prompt)-1])
	}
	rng := rand.New(rand.NewPCG(seed, uint64(len(prompt))))
	lp := make([]float64, 0, m.vocab)
	sp := make([]float64, m.vocab)
	steps := make([]Step, 0, n)
	for range n {
		lp = m.Logprobs(last, max(temperature, 1), bias, lp)
		copy(sp, lp)
		if hook != nil {
			hook(last, sp)
		}
		for v := range sp {
			if !Printable(v) {
				sp[v] = math.Inf(-1)
			}
		}
		tok := 32
		if temperature <= 0 {
			for v := range sp {
				if sp[v] > sp[tok] {
					tok = v
				}
			}
		} else {
			maxv, z := math.Inf(-1), 0.0
			for _, x := range sp {
				maxv = math.Max(maxv, x)
			}
			for _, x := range sp {
				z += math.Exp(x - maxv)
			}
			u, acc := rng.Float64()*z, 0.0
			for v := range sp {
				acc += math.Exp(sp[v] - maxv)
				if u <= acc && !math.IsInf(sp[v], -1) {
					tok = v
					break
				}
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

// TokenText renders a token: printable bytes as themselves (all that is ever sampled),
// others as \xNN (they appear only among reported alternatives).
func TokenText(tok int) string {
	if Printable(tok) {
		return string(rune(tok))
	}
	return fmt.Sprintf("\\x%02x", tok)
}
