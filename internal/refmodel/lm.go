package refmodel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sort"
)

// LM is what the server serves: a tokenizer and a sampler over next-token log-probabilities.
type LM interface {
	Vocab() int
	// PromptTokens renders messages (chat) or text (completions) into token ids.
	PromptTokens(messages []ChatMessage, text string, chat bool) []int
	// Generate continues the prompt; see GenOptions.
	Generate(prompt []int, o GenOptions) ([]Step, error)
	TokenText(tok int) string
	TokenBytes(tok int) []int
}

// ChatMessage is one message of a chat request.
type ChatMessage struct {
	Role, Content string
}

// GenOptions control sampling. Temperature 0 is greedy. TopP < 1 samples from the
// smallest set of tokens whose probability reaches TopP. Bias is OpenAI's logit_bias.
// Hook, if set, may change the sampling log-probabilities given the context so far (prompt
// and generated tokens): a watermark.
// Reported logprobs are the model's log-softmax with the bias applied, at temperature 1.
type GenOptions struct {
	N           int
	Temperature float64
	TopP        float64
	Seed        uint64
	Top         int
	Bias        map[int]float64
	Hook        func(ctx []int, lp []float64)
}

// bigramLM serves the byte-level bigram Model.
type bigramLM struct{ m *Model }

func (b bigramLM) Vocab() int { return b.m.vocab }

func (b bigramLM) PromptTokens(msgs []ChatMessage, text string, chat bool) []int {
	if chat {
		text = ""
		for _, m := range msgs {
			text += m.Content
		}
	}
	return Tokenize(text)
}

func (b bigramLM) Generate(prompt []int, o GenOptions) ([]Step, error) {
	p := make([]byte, len(prompt))
	for i, t := range prompt {
		p[i] = byte(t)
	}
	var hook func(int, []float64)
	if o.Hook != nil {
		hook = func(prev int, lp []float64) { o.Hook([]int{prev}, lp) } // the bigram model's context is one token
	}
	return b.m.Generate(p, o.N, o.Temperature, o.Seed, o.Top, o.Bias, hook), nil
}

func (b bigramLM) TokenText(tok int) string { return TokenText(tok) }
func (b bigramLM) TokenBytes(tok int) []int { return []int{tok} }

// LlamaLM serves a Llama-family model with its tokenizer and the Llama 3 chat template.
type LlamaLM struct {
	M *Llama
	T *Tokenizer
}

// LoadLlamaLM loads a model directory (config.json, model.safetensors, tokenizer.json).
func LoadLlamaLM(dir string) (*LlamaLM, error) {
	m, err := LoadLlama(dir)
	if err != nil {
		return nil, err
	}
	t, err := LoadTokenizer(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, err
	}
	if t.Size() > m.Cfg.VocabSize {
		return nil, fmt.Errorf("tokenizer has %d tokens, the model %d", t.Size(), m.Cfg.VocabSize)
	}
	return &LlamaLM{M: m, T: t}, nil
}

func (l *LlamaLM) Vocab() int { return l.M.Cfg.VocabSize }

func (l *LlamaLM) PromptTokens(msgs []ChatMessage, text string, chat bool) []int {
	if !chat {
		return l.T.Encode(text)
	}
	s := "<|begin_of_text|>"
	for _, m := range msgs {
		role := m.Role
		if role == "" {
			role = "user"
		}
		s += "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + m.Content + "<|eot_id|>"
	}
	s += "<|start_header_id|>assistant<|end_header_id|>\n\n"
	return l.T.Encode(s)
}

func (l *LlamaLM) TokenText(tok int) string { return string(l.T.TokenBytes(tok)) }

func (l *LlamaLM) TokenBytes(tok int) []int {
	b := l.T.TokenBytes(tok)
	out := make([]int, len(b))
	for i, c := range b {
		out[i] = int(c)
	}
	return out
}

// Generate prefills the prompt and samples up to N tokens; it stops early after <|eot_id|>.
func (l *LlamaLM) Generate(prompt []int, o GenOptions) ([]Step, error) {
	out, err := l.GenerateN(prompt, o, 1)
	if len(out) == 0 {
		return nil, err
	}
	return out[0], err
}

// GenerateN samples n continuations of one prompt, prefilled once: continuation i is
// sampled with seed o.Seed+i from its own copy of the prompt's KV cache.
func (l *LlamaLM) GenerateN(prompt []int, o GenOptions, n int) ([][]Step, error) {
	m := l.M
	if len(prompt) == 0 {
		prompt = []int{0}
	}
	if len(prompt)+o.N > m.Cfg.MaxPositions {
		return nil, fmt.Errorf("prompt of %d tokens and %d new ones exceed the context of %d", len(prompt), o.N, m.Cfg.MaxPositions)
	}
	s := m.NewState()
	logits := make([]float32, m.Cfg.VocabSize)
	for _, t := range prompt {
		if err := m.Forward(s, t, logits); err != nil {
			return nil, err
		}
	}
	// Ids the tokenizer lacks (a model's vocabulary padded past its tokenizer's) are no
	// tokens: they have no text to report or sample, so they carry no probability.
	absent := make([]bool, m.Cfg.VocabSize)
	for k := range absent {
		absent[k] = !l.T.Has(k)
	}
	out := make([][]Step, 0, n)
	for i := range n {
		si, li := s, logits
		if i < n-1 { // the last continuation may use the prefill itself
			si, li = s.Clone(), append([]float32(nil), logits...)
		}
		oi := o
		oi.Seed += uint64(i)
		steps, err := l.decode(si, li, prompt, oi, absent)
		out = append(out, steps)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// decode samples up to o.N tokens from a state that has consumed prompt and whose
// next-token logits are logits.
func (l *LlamaLM) decode(s *State, logits []float32, prompt []int, o GenOptions, absent []bool) ([]Step, error) {
	eot, hasEOT := l.T.Special("<|eot_id|>")
	rng := rand.New(rand.NewPCG(o.Seed, uint64(len(prompt))))
	v := len(logits)
	lp, sp := make([]float64, v), make([]float64, v)
	ctx := append([]int(nil), prompt...)
	var steps []Step
	for i := range o.N {
		// Reported: log-softmax of logits + bias over the tokenizer's tokens. Sampling: the
		// same, over temperature.
		for k, x := range logits {
			lp[k] = float64(x) + o.Bias[k]
			if absent[k] {
				lp[k] = math.Inf(-1)
			}
		}
		logSoftmax(lp)
		temp := o.Temperature
		for k := range sp {
			sp[k] = lp[k] / max(temp, 1e-6)
			if _, special := l.T.specInv[k]; special && !(hasEOT && k == eot) || absent[k] {
				sp[k] = math.Inf(-1) // never sample control tokens or ids the tokenizer lacks
			}
		}
		logSoftmax(sp)
		if o.Hook != nil {
			o.Hook(ctx, sp)
		}
		tok := sample(sp, temp, o.TopP, rng)
		st := Step{Token: tok, Logprob: lp[tok]}
		st.Top = topK(lp, o.Top)
		steps = append(steps, st)
		if hasEOT && tok == eot || i == o.N-1 { // no forward pass for logits nobody reads
			break
		}
		if err := l.M.Forward(s, tok, logits); err != nil {
			return steps, err
		}
		ctx = append(ctx, tok)
	}
	return steps, nil
}

func logSoftmax(x []float64) {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = max(mx, v)
	}
	z := 0.0
	for _, v := range x {
		z += math.Exp(v - mx)
	}
	lz := mx + math.Log(z)
	for k := range x {
		x[k] -= lz
	}
}

// sample draws from log-probabilities lp: greedy at temperature 0, nucleus when topP < 1.
func sample(lp []float64, temp, topP float64, rng *rand.Rand) int {
	if temp <= 0 {
		best := 0
		for k, v := range lp {
			if v > lp[best] {
				best = k
			}
		}
		return best
	}
	idx := make([]int, 0, len(lp))
	for k, v := range lp {
		if !math.IsInf(v, -1) {
			idx = append(idx, k)
		}
	}
	if topP > 0 && topP < 1 {
		sort.Slice(idx, func(a, b int) bool { return lp[idx[a]] > lp[idx[b]] })
		acc := 0.0
		for n, k := range idx {
			acc += math.Exp(lp[k])
			if acc >= topP {
				idx = idx[:n+1]
				break
			}
		}
	}
	z := 0.0
	for _, k := range idx {
		z += math.Exp(lp[k])
	}
	u, acc := rng.Float64()*z, 0.0
	for _, k := range idx {
		acc += math.Exp(lp[k])
		if u <= acc {
			return k
		}
	}
	return idx[len(idx)-1]
}

func topK(lp []float64, k int) []Alt {
	if k <= 0 {
		return nil
	}
	k = min(k, len(lp))
	out := make([]Alt, 0, k)
	for range k {
		best := -1
		for v := range lp {
			if (best < 0 || lp[v] > lp[best]) && !hasAlt(out, v) && !math.IsInf(lp[v], -1) {
				best = v
			}
		}
		if best < 0 { // fewer tokens than asked for
			break
		}
		out = append(out, Alt{Token: best, Logprob: lp[best]})
	}
	return out
}
