package refmodel

import (
	"fmt"

	"github.com/strongroom/strongroom/internal/watermark"
	"path/filepath"
	"testing"
	"time"
)

// copyBandwidth measures memory copy bandwidth (bytes/s) over buffers larger than caches.
func copyBandwidth(size int) float64 {
	src, dst := make([]byte, size), make([]byte, size)
	for i := range src {
		src[i] = byte(i)
	}
	copy(dst, src) // fault the pages in
	best := 0.0
	for range 5 {
		t0 := time.Now()
		copy(dst, src)
		best = max(best, float64(size)/time.Since(t0).Seconds())
	}
	return best
}

// BenchmarkDecode: batch-1 decode tokens/s of synthesized Llama models next to the memory
// roofline measured in the same run (weight bytes read per token ÷ copy bandwidth).
func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		name string
		o    LlamaSynth
	}{
		{"15M", SmallLlama()},
		{"110M", LlamaSynth{Name: "m110", Layers: 12, Dim: 768, Heads: 12, KVHeads: 4, Intermediate: 3072, Vocab: 8192, MaxPositions: 2048, Seed: 2}},
	} {
		b.Run(c.name, func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), c.name)
			if err := SynthesizeLlama(dir, c.o); err != nil {
				b.Fatal(err)
			}
			m, err := LoadLlama(dir)
			if err != nil {
				b.Fatal(err)
			}
			bw := copyBandwidth(256 << 20)
			s := m.NewState()
			logits := make([]float32, m.Cfg.VocabSize)
			for _, t := range []int{1, 2, 3, 4, 5, 6, 7, 8} {
				m.Forward(s, t, logits)
			}
			tok := 9
			b.ResetTimer()
			t0 := time.Now()
			n := 0
			for b.Loop() {
				if s.Pos() >= m.Cfg.MaxPositions-1 {
					s = m.NewState()
				}
				if err := m.Forward(s, tok, logits); err != nil {
					b.Fatal(err)
				}
				tok = (tok*31 + 7) % 256
				n++
			}
			el := time.Since(t0).Seconds()
			tps := float64(n) / el
			roof := bw / float64(m.WeightBytes())
			b.ReportMetric(tps, "tokens/s")
			b.ReportMetric(roof, "roofline-tokens/s")
			b.ReportMetric(tps/roof, "of-roofline")
			b.ReportMetric(bw/1e9, "copy-GB/s")
			b.ReportMetric(float64(m.Cfg.Params())/1e6, "Mparams")
			// Watermark cost per token at this vocabulary, as a share of decode time.
			perTok := el / float64(n)
			lp := make([]float64, m.Cfg.VocabSize)
			for k, x := range logits {
				lp[k] = float64(x)
			}
			logSoftmax(lp)
			secret := make([]byte, 32)
			gl, _ := watermark.DeriveKey(secret, "t", watermark.DefaultParams())
			tk, _ := watermark.DeriveTournament(secret, "t")
			buf := make([]float64, len(lp))
			ctx := []int{1, 2, 3, 4}
			for _, w := range []struct {
				name string
				f    func()
			}{{"greenlist", func() { gl.Bias(ctx[3], buf) }}, {"synthid", func() { tk.Apply(ctx, buf) }}} {
				t1 := time.Now()
				const reps = 200
				for i := range reps {
					copy(buf, lp)
					ctx[3] = i
					w.f()
				}
				b.ReportMetric(time.Since(t1).Seconds()/reps/perTok*100, w.name+"-%-of-decode")
			}
			b.Logf("%s: %s", c.name, fmt.Sprintf("%.1f tokens/s, roofline %.1f", tps, roof))
		})
	}
}
