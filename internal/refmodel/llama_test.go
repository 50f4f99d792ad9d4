package refmodel

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
)

var regen = flag.Bool("regen", false, "rewrite testdata/tiny-* model directories (then rerun testdata/golden.py)")

// tiny is the golden-test model: two layers, grouped-query attention (4 heads, 2 kv heads).
func tiny(dtype string) LlamaSynth {
	return LlamaSynth{Name: "tiny", Layers: 2, Dim: 64, Heads: 4, KVHeads: 2, Intermediate: 128, Vocab: 320, MaxPositions: 64, Seed: 7, DType: dtype}
}

var goldenTokens = []int{1, 72, 101, 108, 108, 111, 300, 44, 32, 255, 0, 17}

// TestGoldenLogits: the Go forward pass (KV cache, one token at a time) matches logits that
// testdata/golden.py computed with NumPy in float64 over the whole sequence, for float32
// and bfloat16 weights. To regenerate:
//
//	go test ./internal/refmodel -run TestGoldenLogits -regen
//	for d in f32 bf16; do /usr/bin/python3 internal/refmodel/testdata/golden.py \
//	  internal/refmodel/testdata/tiny-$d 1 72 101 108 108 111 300 44 32 255 0 17 \
//	  > internal/refmodel/testdata/golden-$d.json; done
func TestGoldenLogits(t *testing.T) {
	for _, dt := range []struct{ name, dtype string }{{"f32", "F32"}, {"bf16", "BF16"}} {
		dir := filepath.Join("testdata", "tiny-"+dt.name)
		if *regen {
			if err := SynthesizeLlama(dir, tiny(dt.dtype)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		m, err := LoadLlama(dir)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(filepath.Join("testdata", "golden-"+dt.name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		var g struct {
			Tokens []int
			Logits [][]float64
		}
		if err := json.Unmarshal(raw, &g); err != nil {
			t.Fatal(err)
		}
		s := m.NewState()
		logits := make([]float32, m.Cfg.VocabSize)
		worst := 0.0
		for pos, tok := range g.Tokens {
			if err := m.Forward(s, tok, logits); err != nil {
				t.Fatal(err)
			}
			for k, want := range g.Logits[pos] {
				d := math.Abs(float64(logits[k]) - want)
				worst = max(worst, d)
				// Stated tolerance: 1e-4 absolute (float32 arithmetic against float64, logits of
				// magnitude ~1–10, golden rounded to 1e-6); measured worst is logged.
				if d > 1e-4 {
					t.Fatalf("%s: position %d token %d: logit %g, golden %g", dt.name, pos, k, logits[k], want)
				}
			}
		}
		t.Logf("%s: %d positions × %d logits, worst absolute difference %.2g", dt.name, len(g.Tokens), m.Cfg.VocabSize, worst)
	}
}

func TestTokenizerRoundTripAndMerges(t *testing.T) {
	m, err := LoadTokenizer(filepath.Join("testdata", "tiny-f32", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"the model weights are sealed", "Hello, world!\n\n  it's 2026 — ünïcödé ✓", ""} {
		ids := m.Encode(s)
		if got := m.Decode(ids); got != s {
			t.Fatalf("round trip %q -> %v -> %q", s, ids, got)
		}
	}
	// Frequent corpus words merge into fewer tokens than bytes.
	if ids := m.Encode(" the"); len(ids) != 1 {
		t.Fatalf("' the' is %v, want one merged token", ids)
	}
	bos, ok := m.Special("<|begin_of_text|>")
	if ids := m.Encode("<|begin_of_text|>hi"); !ok || ids[0] != bos {
		t.Fatalf("special token: %v (bos %d)", ids, bos)
	}
}

func TestF16(t *testing.T) {
	for _, x := range []float32{0, 1, -2.5, 65504, 6.1035156e-05, 5.9604645e-08, 0.333251953125} {
		if got := f16ToF32(f32ToHalf(x, "F16")); got != x {
			t.Fatalf("f16 round trip %g -> %g", x, got)
		}
	}
	if got := math.Float32bits(math.Float32frombits(uint32(f32ToHalf(1.00390625, "BF16")) << 16)); got != math.Float32bits(1.0) && got != math.Float32bits(1.0078125) {
		t.Fatalf("bf16 rounding: %x", got)
	}
}

// FuzzTokenizer: any tokenizer.json either fails to parse or encodes and decodes text
// without panicking; a parsed tokenizer round-trips text exactly.
func FuzzTokenizer(f *testing.F) {
	good, _ := os.ReadFile(filepath.Join("testdata", "tiny-f32", "tokenizer.json"))
	f.Add(good, "hello world")
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{},"merges":[]}}`), "x")
	f.Add([]byte(`{"model":{"type":"BPE","vocab":{"a":0},"merges":["a a"]}}`), "aa")
	f.Fuzz(func(t *testing.T, js []byte, text string) {
		tk, err := ParseTokenizer(js)
		if err != nil {
			return
		}
		if got := tk.Decode(tk.Encode(text)); got != text {
			t.Fatalf("round trip %q -> %q", text, got)
		}
	})
}

// FuzzLlamaConfig: configs that pass the checks never make the loader panic on a
// mismatched weights file.
func FuzzLlamaConfig(f *testing.F) {
	cfg, _ := os.ReadFile(filepath.Join("testdata", "tiny-f32", "config.json"))
	weights, _ := os.ReadFile(filepath.Join("testdata", "tiny-bf16", "model.safetensors"))
	f.Add(cfg)
	f.Add([]byte(`{"hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":3,"vocab_size":4}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		var c LlamaConfig
		if json.Unmarshal(js, &c) != nil {
			return
		}
		if m, err := NewLlama(c, bytes.NewReader(weights), int64(len(weights))); err == nil {
			s := m.NewState()
			logits := make([]float32, m.Cfg.VocabSize)
			m.Forward(s, 1, logits)
		}
	})
}
