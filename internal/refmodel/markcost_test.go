package refmodel

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/strongroom/strongroom/internal/fingerprint"
)

// markText is the fixed text over which the mark's cost is measured.
const markText = `The quick brown fox jumps over the lazy dog. Strongroom keeps model weights sealed,
and every copy that leaves it carries its licensee's mark. A leaked file can be traced to the
copy it came from, converted, quantized or fine-tuned as it may be. 0123456789 — ünïcödé.`

// markCost is what a weight change does to the reference runtime's next-token
// distributions over markText: mean KL(original ‖ changed) in nats per token and both
// perplexities.
type markCost struct{ kl, pplOrig, pplNew float64 }

func measure(t testing.TB, cfg LlamaConfig, orig, changed *fingerprint.Model, toks []int) markCost {
	load := func(m *fingerprint.Model) *Llama {
		var buf bytes.Buffer
		if err := fingerprint.WriteSafetensors(&buf, m.Tensors, "F32", nil); err != nil {
			t.Fatal(err)
		}
		l, err := NewLlama(cfg, bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b := load(orig), load(changed)
	sa, sb := a.NewState(), b.NewState()
	la, lb := make([]float32, cfg.VocabSize), make([]float32, cfg.VocabSize)
	var kl, nllA, nllB float64
	n := 0
	for i, tok := range toks[:len(toks)-1] {
		if err := a.Forward(sa, tok, la); err != nil {
			t.Fatal(err)
		}
		if err := b.Forward(sb, tok, lb); err != nil {
			t.Fatal(err)
		}
		pa, pb := logProbs(la), logProbs(lb)
		for v := range pa {
			kl += math.Exp(pa[v]) * (pa[v] - pb[v])
		}
		nllA -= pa[toks[i+1]]
		nllB -= pb[toks[i+1]]
		n++
	}
	return markCost{kl / float64(n), math.Exp(nllA / float64(n)), math.Exp(nllB / float64(n))}
}

func logProbs(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	logSoftmax(out)
	return out
}

// TestMarkCost: the licensee mark moves the reference runtime's next-token
// distributions far less than 4-bit quantization (GGUF Q4_0) of the same weights does.
// STRONGROOM_EVAL=1 also measures the 15M-parameter demo model (docs/PERFORMANCE.md).
func TestMarkCost(t *testing.T) {
	shapes := []LlamaSynth{{Name: "small", Layers: 2, Dim: 128, Heads: 4, KVHeads: 2, Intermediate: 256, Vocab: 512, MaxPositions: 512, Seed: 3}}
	if os.Getenv("STRONGROOM_EVAL") != "" {
		shapes = append(shapes, SmallLlama())
	}
	secret := []byte("fingerprint-mark-cost-test-secret")
	for _, s := range shapes {
		dir := t.TempDir()
		if err := SynthesizeLlama(dir, s); err != nil {
			t.Fatal(err)
		}
		m, err := LoadLlama(dir)
		if err != nil {
			t.Fatal(err)
		}
		tk, err := LoadTokenizer(filepath.Join(dir, "tokenizer.json"))
		if err != nil {
			t.Fatal(err)
		}
		toks := tk.Encode(markText)
		orig, err := fingerprint.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		mk, _ := fingerprint.ModelKey(secret, "m:1")
		lk, _ := fingerprint.LicenseeKey(secret, "m:1", "acme")
		marked := cloneFP(orig)
		fingerprint.Embed(marked, mk, lk)
		var q4 bytes.Buffer
		if err := fingerprint.WriteModelGGUF(&q4, orig, fingerprint.TypeQ4_0); err != nil {
			t.Fatal(err)
		}
		quant, err := fingerprint.Read(bytes.NewReader(q4.Bytes()), int64(q4.Len()))
		if err != nil {
			t.Fatal(err)
		}
		cm := measure(t, m.Cfg, orig, marked, toks)
		cq := measure(t, m.Cfg, orig, quant, toks)
		t.Logf("%s (%.1fM params, %d tokens): mark KL %.2e nats/token, ppl %.3f → %.3f; 4-bit Q4_0 KL %.2e, ppl → %.3f; ratio %.0f×",
			s.Name, float64(m.Cfg.Params())/1e6, len(toks), cm.kl, cm.pplOrig, cm.pplNew, cq.kl, cq.pplNew, cq.kl/cm.kl)
		if cm.kl*20 > cq.kl {
			t.Errorf("%s: the mark's KL %.3g is not well under 4-bit quantization's %.3g", s.Name, cm.kl, cq.kl)
		}
	}
}

func cloneFP(m *fingerprint.Model) *fingerprint.Model {
	c := *m
	c.Tensors = make([]fingerprint.Tensor, len(m.Tensors))
	for i, t := range m.Tensors {
		c.Tensors[i] = fingerprint.Tensor{Name: t.Name, Shape: t.Shape, Data: append([]float32(nil), t.Data...)}
	}
	return &c
}
