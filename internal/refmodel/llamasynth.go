package refmodel

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/strongroom/strongroom/internal/fingerprint"
)

// LlamaSynth shapes a synthesized Llama-family model directory.
type LlamaSynth struct {
	Name                              string
	Layers, Dim, Heads, KVHeads       int
	Intermediate, Vocab, MaxPositions int
	Seed                              uint64
	DType                             string // "F32" (default), "BF16" or "F16"
	Tied                              bool   // tie the output head to the embedding
}

// SmallLlama is the ~15M-parameter model `strongroom dev` serves.
func SmallLlama() LlamaSynth {
	return LlamaSynth{Name: "strongroom-demo", Layers: 6, Dim: 384, Heads: 6, KVHeads: 2, Intermediate: 1024, Vocab: 8192, MaxPositions: 2048, Seed: 1}
}

// Chat special tokens of the synthesized tokenizer (Llama 3 names).
var chatSpecials = []string{"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}

// synthCorpus is deterministic text to train the synthesized tokenizer's merges on.
func synthCorpus(seed uint64) string {
	base := strings.Fields(`the of and to a in is that for it as was with be by on not he this are or his from at which but
have an they you were her she there been one all we their has would when if so no will more can out other about into
them some could time these two may first then do any like my now over such our man me even most made after also did
many before must through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being under never day same
another know while last might us great old year off come since against go came right used take three model data
weights security secure sealed lease runtime gateway policy audit log token vector matrix attention layer network
question answer explain describe compare write summary example reason result value function system language`)
	r := rand.New(rand.NewPCG(seed, seed^0xc0ffee))
	var b strings.Builder
	for range 40000 {
		w := base[r.IntN(len(base))]
		if r.IntN(7) == 0 {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		b.WriteString(w)
		switch r.IntN(12) {
		case 0:
			b.WriteString(". ")
		case 1:
			b.WriteString(", ")
		case 2:
			b.WriteString("\n")
		default:
			b.WriteString(" ")
		}
		if r.IntN(40) == 0 {
			fmt.Fprintf(&b, "%d ", r.IntN(3000))
		}
	}
	return b.String()
}

// SynthesizeLlama writes config.json, tokenizer.json (byte-level BPE with merges learned
// from a built-in corpus, plus chat special tokens) and model.safetensors (random normal
// weights from Seed, RMSNorm weights near 1) into dir.
func SynthesizeLlama(dir string, o LlamaSynth) error {
	if o.DType == "" {
		o.DType = "F32"
	}
	if o.MaxPositions == 0 {
		o.MaxPositions = 2048
	}
	if o.KVHeads == 0 {
		o.KVHeads = o.Heads
	}
	cfg := LlamaConfig{ModelType: "llama", HiddenSize: o.Dim, IntermediateSize: o.Intermediate, NumLayers: o.Layers, NumHeads: o.Heads,
		NumKVHeads: o.KVHeads, VocabSize: o.Vocab, RMSNormEps: 1e-5, RopeTheta: 10000, MaxPositions: o.MaxPositions,
		TieWordEmbeddings: o.Tied, TorchDtype: map[string]string{"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[o.DType]}
	if err := cfg.check(); err != nil {
		return err
	}
	if cfg.TorchDtype == "" {
		return fmt.Errorf("refmodel: dtype %q: want F32, BF16 or F16", o.DType)
	}
	if o.Vocab < 256+len(chatSpecials) {
		return fmt.Errorf("refmodel: vocab %d is smaller than the 256 byte tokens and %d special tokens", o.Vocab, len(chatSpecials))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	vocab, merges := trainBPE(synthCorpus(o.Seed), o.Vocab-len(chatSpecials))
	var added []map[string]any
	for k, s := range chatSpecials {
		added = append(added, map[string]any{"id": len(vocab) + k, "content": s, "special": true})
	}
	tok := map[string]any{
		"version":        "1.0",
		"added_tokens":   added,
		"pre_tokenizer":  map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
		"decoder":        map[string]any{"type": "ByteLevel"},
		"model":          map[string]any{"type": "BPE", "vocab": vocab, "merges": merges},
		"normalizer":     nil,
		"post_processor": nil,
	}
	if err := writeJSON(filepath.Join(dir, "tokenizer.json"), tok); err != nil {
		return err
	}
	d, i, v, kv := int64(o.Dim), int64(o.Intermediate), int64(o.Vocab), int64(o.KVHeads*(o.Dim/o.Heads))
	ts := []tensor{{"model.embed_tokens.weight", []int64{v, d}}, {"model.norm.weight", []int64{d}}}
	if !o.Tied {
		ts = append(ts, tensor{"lm_head.weight", []int64{v, d}})
	}
	for l := range o.Layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		ts = append(ts, tensor{p + "input_layernorm.weight", []int64{d}}, tensor{p + "post_attention_layernorm.weight", []int64{d}},
			tensor{p + "self_attn.q_proj.weight", []int64{d, d}}, tensor{p + "self_attn.k_proj.weight", []int64{kv, d}},
			tensor{p + "self_attn.v_proj.weight", []int64{kv, d}}, tensor{p + "self_attn.o_proj.weight", []int64{d, d}},
			tensor{p + "mlp.gate_proj.weight", []int64{i, d}}, tensor{p + "mlp.up_proj.weight", []int64{i, d}},
			tensor{p + "mlp.down_proj.weight", []int64{d, i}})
	}
	return writeTensors(filepath.Join(dir, "model.safetensors"), ts, o.Seed, o.DType)
}

// writeTensors writes safetensors in dtype; norm weights are 1 + small noise, matrices
// normal with standard deviation 1/sqrt(fan-in) (embeddings: 1).
func writeTensors(path string, ts []tensor, seed uint64, dtype string) error {
	width := int64(4)
	if dtype != "F32" {
		width = 2
	}
	seedBytes := [32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), 'L'}
	rng := rand.New(rand.NewChaCha8(seedBytes))
	var buf [4]byte
	return writeSafetensorsWith(path, ts, dtype, width, func(t tensor, w *bufio.Writer) {
		put := func(x float32) {
			if width == 4 {
				binary.LittleEndian.PutUint32(buf[:], math.Float32bits(x))
			} else {
				binary.LittleEndian.PutUint16(buf[:], f32ToHalf(x, dtype))
			}
			w.Write(buf[:width])
		}
		scale := 1 / math.Sqrt(float64(t.shape[len(t.shape)-1]))
		norm := len(t.shape) == 1
		if strings.Contains(t.name, "embed_tokens") {
			scale = 1
		}
		for range t.elems() {
			x := rng.NormFloat64() * scale
			if norm {
				x = 1 + 0.1*rng.NormFloat64()
			}
			put(float32(x))
		}
	})
}

// f32ToHalf encodes dtype "BF16" (round to nearest even) or "F16" (IEEE 754 half).
func f32ToHalf(x float32, dtype string) uint16 {
	if dtype == "BF16" {
		return fingerprint.F32ToBF16(x)
	}
	return fingerprint.F32ToF16(x)
}
