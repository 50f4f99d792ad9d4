package refmodel

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// LlamaConfig is the subset of a Hugging Face config.json a Llama-family decoder needs.
type LlamaConfig struct {
	ModelType         string  `json:"model_type"`
	HiddenSize        int     `json:"hidden_size"`
	IntermediateSize  int     `json:"intermediate_size"`
	NumLayers         int     `json:"num_hidden_layers"`
	NumHeads          int     `json:"num_attention_heads"`
	NumKVHeads        int     `json:"num_key_value_heads"`
	VocabSize         int     `json:"vocab_size"`
	RMSNormEps        float64 `json:"rms_norm_eps"`
	RopeTheta         float64 `json:"rope_theta"`
	MaxPositions      int     `json:"max_position_embeddings"`
	TieWordEmbeddings bool    `json:"tie_word_embeddings"`
	TorchDtype        string  `json:"torch_dtype,omitempty"`
}

func (c *LlamaConfig) check() error {
	if c.NumKVHeads == 0 {
		c.NumKVHeads = c.NumHeads
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if c.RMSNormEps == 0 {
		c.RMSNormEps = 1e-5
	}
	if c.MaxPositions == 0 {
		c.MaxPositions = 2048
	}
	switch {
	case c.HiddenSize <= 0 || c.IntermediateSize <= 0 || c.NumLayers <= 0 || c.NumHeads <= 0 || c.VocabSize <= 0:
		return fmt.Errorf("llama config: sizes must be positive")
	case c.HiddenSize%c.NumHeads != 0 || (c.HiddenSize/c.NumHeads)%2 != 0:
		return fmt.Errorf("llama config: hidden_size %d is not an even head dimension times %d heads", c.HiddenSize, c.NumHeads)
	case c.NumKVHeads <= 0 || c.NumHeads%c.NumKVHeads != 0:
		return fmt.Errorf("llama config: %d heads do not group into %d kv heads", c.NumHeads, c.NumKVHeads)
	case c.HiddenSize > 1<<16 || c.IntermediateSize > 1<<18 || c.NumLayers > 1024 || c.VocabSize > 1<<20 || c.MaxPositions > 1<<20:
		return fmt.Errorf("llama config: sizes beyond what the reference runtime serves")
	}
	return nil
}

// HeadDim is the size of one attention head.
func (c *LlamaConfig) HeadDim() int { return c.HiddenSize / c.NumHeads }

// Params is the number of weights.
func (c *LlamaConfig) Params() int64 {
	d, i, v, kv := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.VocabSize), int64(c.NumKVHeads*c.HeadDim())
	layer := d*d + 2*d*kv + d*d + 3*d*i + 2*d
	n := v*d + int64(c.NumLayers)*layer + d
	if !c.TieWordEmbeddings {
		n += v * d
	}
	return n
}

type llamaLayer struct {
	attnNorm, ffnNorm []float32
	wq, wk, wv, wo    []float32
	wgate, wup, wdown []float32
}

// Llama is a decoder-only transformer of the Llama family (RMSNorm, rotary embeddings,
// grouped-query attention, SwiGLU), weights held as float32.
type Llama struct {
	Cfg     LlamaConfig
	embed   []float32 // vocab × hidden
	layers  []llamaLayer
	norm    []float32
	lmHead  []float32 // vocab × hidden (the embedding when tied)
	invFreq []float64
	workers int
}

// LoadLlama reads config.json and model.safetensors (F32, BF16 or F16) from dir.
func LoadLlama(dir string) (*Llama, error) {
	cb, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	var cfg LlamaConfig
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, fmt.Errorf("config.json: %w", err)
	}
	f, err := os.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return NewLlama(cfg, f, fi.Size())
}

// NewLlama loads weights from a safetensors stream (a plain file, a memfd, a sealed reader).
func NewLlama(cfg LlamaConfig, r io.ReaderAt, size int64) (*Llama, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	st, err := OpenSafetensors(r, size)
	if err != nil {
		return nil, err
	}
	d, i, v, kv := int64(cfg.HiddenSize), int64(cfg.IntermediateSize), int64(cfg.VocabSize), int64(cfg.NumKVHeads*cfg.HeadDim())
	get := func(name string, shape ...int64) ([]float32, error) {
		w, sh, err := st.Floats(name)
		if err != nil {
			return nil, err
		}
		if len(sh) != len(shape) {
			return nil, fmt.Errorf("tensor %s: shape %v, want %v", name, sh, shape)
		}
		for k := range sh {
			if sh[k] != shape[k] {
				return nil, fmt.Errorf("tensor %s: shape %v, want %v", name, sh, shape)
			}
		}
		return w, nil
	}
	m := &Llama{Cfg: cfg, workers: runtime.GOMAXPROCS(0)}
	if m.embed, err = get("model.embed_tokens.weight", v, d); err != nil {
		return nil, err
	}
	if m.norm, err = get("model.norm.weight", d); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.lmHead = m.embed
	} else if m.lmHead, err = get("lm_head.weight", v, d); err != nil {
		return nil, err
	}
	for l := range cfg.NumLayers {
		p := fmt.Sprintf("model.layers.%d.", l)
		var L llamaLayer
		for _, t := range []struct {
			dst   *[]float32
			name  string
			shape []int64
		}{
			{&L.attnNorm, "input_layernorm.weight", []int64{d}},
			{&L.ffnNorm, "post_attention_layernorm.weight", []int64{d}},
			{&L.wq, "self_attn.q_proj.weight", []int64{d, d}},
			{&L.wk, "self_attn.k_proj.weight", []int64{kv, d}},
			{&L.wv, "self_attn.v_proj.weight", []int64{kv, d}},
			{&L.wo, "self_attn.o_proj.weight", []int64{d, d}},
			{&L.wgate, "mlp.gate_proj.weight", []int64{i, d}},
			{&L.wup, "mlp.up_proj.weight", []int64{i, d}},
			{&L.wdown, "mlp.down_proj.weight", []int64{d, i}},
		} {
			if *t.dst, err = get(p+t.name, t.shape...); err != nil {
				return nil, err
			}
		}
		m.layers = append(m.layers, L)
	}
	hd := cfg.HeadDim()
	m.invFreq = make([]float64, hd/2)
	for k := range m.invFreq {
		m.invFreq[k] = 1 / math.Pow(cfg.RopeTheta, float64(2*k)/float64(hd))
	}
	return m, nil
}

// WeightBytes is how many bytes of weights one decoding step reads (float32 in memory):
// every matrix once, and one row of the embedding unless it doubles as the output head.
func (m *Llama) WeightBytes() int64 {
	n := m.Cfg.Params()
	if !m.Cfg.TieWordEmbeddings {
		n -= int64(m.Cfg.VocabSize-1) * int64(m.Cfg.HiddenSize)
	}
	return 4 * n
}

// State is one sequence's KV cache.
type State struct {
	k, v [][]float32 // per layer: positions × kv dim
	pos  int
	// scratch
	x, h, q, att, ff1, ff2, scores []float32
}

// NewState starts a sequence.
func (m *Llama) NewState() *State {
	c := m.Cfg
	kv := c.NumKVHeads * c.HeadDim()
	s := &State{k: make([][]float32, c.NumLayers), v: make([][]float32, c.NumLayers),
		x: make([]float32, c.HiddenSize), h: make([]float32, c.HiddenSize), q: make([]float32, c.HiddenSize),
		att: make([]float32, c.HiddenSize), ff1: make([]float32, c.IntermediateSize), ff2: make([]float32, c.IntermediateSize)}
	for l := range s.k {
		s.k[l] = make([]float32, 0, 64*kv)
		s.v[l] = make([]float32, 0, 64*kv)
	}
	return s
}

// Hidden is the final (normalized) hidden state of the last token fed to Forward.
func (s *State) Hidden() []float32 { return s.h }

// Pos is the number of tokens consumed.
func (s *State) Pos() int { return s.pos }

// Clone copies a state (to branch a sequence).
func (s *State) Clone() *State {
	c := *s
	c.k, c.v = make([][]float32, len(s.k)), make([][]float32, len(s.v))
	for l := range s.k {
		c.k[l] = append([]float32(nil), s.k[l]...)
		c.v[l] = append([]float32(nil), s.v[l]...)
	}
	c.x, c.h, c.q, c.att = make([]float32, len(s.x)), make([]float32, len(s.h)), make([]float32, len(s.q)), make([]float32, len(s.att))
	c.ff1, c.ff2 = make([]float32, len(s.ff1)), make([]float32, len(s.ff2))
	return &c
}

func rmsnorm(dst, x, w []float32, eps float64) {
	ss := 0.0
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	r := float32(1 / math.Sqrt(ss/float64(len(x))+eps))
	for k, v := range x {
		dst[k] = w[k] * (v * r)
	}
}

// dot is the inner product, four accumulators to keep the FPU busy.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	k := 0
	for ; k+4 <= len(a); k += 4 {
		s0 += a[k] * b[k]
		s1 += a[k+1] * b[k+1]
		s2 += a[k+2] * b[k+2]
		s3 += a[k+3] * b[k+3]
	}
	for ; k < len(a); k++ {
		s0 += a[k] * b[k]
	}
	return (s0 + s1) + (s2 + s3)
}

// matvec computes out = W x for W rows × len(x), rows split across the cores.
func (m *Llama) matvec(out, w, x []float32) {
	rows, n := len(out), len(x)
	work := func(lo, hi int) {
		for r := lo; r < hi; r++ {
			out[r] = dot(x, w[r*n:(r+1)*n])
		}
	}
	if m.workers <= 1 || rows*n < 1<<14 {
		work(0, rows)
		return
	}
	var wg sync.WaitGroup
	per := (rows + m.workers - 1) / m.workers
	for lo := 0; lo < rows; lo += per {
		hi := min(lo+per, rows)
		wg.Go(func() { work(lo, hi) })
	}
	wg.Wait()
}

func (m *Llama) rope(v []float32, heads, pos int) {
	hd := m.Cfg.HeadDim()
	half := hd / 2
	for h := range heads {
		x := v[h*hd : (h+1)*hd]
		for k := range half {
			ang := float64(pos) * m.invFreq[k]
			c, s := float32(math.Cos(ang)), float32(math.Sin(ang))
			a, b := x[k], x[k+half]
			x[k], x[k+half] = a*c-b*s, b*c+a*s
		}
	}
}

// Forward feeds one token at the state's next position and writes the next-token logits
// (vocab) into logits; with logits nil it skips the LM head (embeddings need only the
// final hidden state, State.Hidden).
func (m *Llama) Forward(s *State, token int, logits []float32) error {
	c := m.Cfg
	if token < 0 || token >= c.VocabSize {
		return fmt.Errorf("token %d outside the vocabulary", token)
	}
	if s.pos >= c.MaxPositions {
		return fmt.Errorf("sequence longer than %d positions", c.MaxPositions)
	}
	d, hd := c.HiddenSize, c.HeadDim()
	kvd := c.NumKVHeads * hd
	group := c.NumHeads / c.NumKVHeads
	copy(s.x, m.embed[token*d:(token+1)*d])
	if cap(s.scores) < s.pos+1 {
		s.scores = make([]float32, s.pos+1, 2*(s.pos+1))
	}
	scores := s.scores[:s.pos+1]
	scale := float32(1 / math.Sqrt(float64(hd)))
	for l, L := range m.layers {
		rmsnorm(s.h, s.x, L.attnNorm, c.RMSNormEps)
		m.matvec(s.q, L.wq, s.h)
		k0, v0 := len(s.k[l]), len(s.v[l])
		s.k[l], s.v[l] = append(s.k[l], make([]float32, kvd)...), append(s.v[l], make([]float32, kvd)...)
		kNew, vNew := s.k[l][k0:], s.v[l][v0:]
		m.matvec(kNew, L.wk, s.h)
		m.matvec(vNew, L.wv, s.h)
		m.rope(s.q, c.NumHeads, s.pos)
		m.rope(kNew, c.NumKVHeads, s.pos)
		for h := range c.NumHeads {
			q := s.q[h*hd : (h+1)*hd]
			kvh := h / group
			mx := float32(math.Inf(-1))
			for t := 0; t <= s.pos; t++ {
				sc := dot(q, s.k[l][t*kvd+kvh*hd:t*kvd+(kvh+1)*hd]) * scale
				scores[t] = sc
				mx = max(mx, sc)
			}
			sum := float32(0)
			for t := range scores {
				scores[t] = float32(math.Exp(float64(scores[t] - mx)))
				sum += scores[t]
			}
			out := s.att[h*hd : (h+1)*hd]
			clear(out)
			for t, p := range scores {
				p /= sum
				vv := s.v[l][t*kvd+kvh*hd : t*kvd+(kvh+1)*hd]
				for k := range out {
					out[k] += p * vv[k]
				}
			}
		}
		m.matvec(s.h, L.wo, s.att)
		for k := range s.x {
			s.x[k] += s.h[k]
		}
		rmsnorm(s.h, s.x, L.ffnNorm, c.RMSNormEps)
		m.matvec(s.ff1, L.wgate, s.h)
		m.matvec(s.ff2, L.wup, s.h)
		for k, g := range s.ff1 {
			s.ff1[k] = g / (1 + float32(math.Exp(float64(-g)))) * s.ff2[k] // SiLU(gate) · up
		}
		m.matvec(s.h, L.wdown, s.ff1)
		for k := range s.x {
			s.x[k] += s.h[k]
		}
	}
	rmsnorm(s.h, s.x, m.norm, c.RMSNormEps)
	if logits != nil {
		m.matvec(logits, m.lmHead, s.h)
	}
	s.pos++
	return nil
}
