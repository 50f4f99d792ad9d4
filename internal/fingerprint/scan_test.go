package fingerprint

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

type shape struct{ layers, d, ff, vocab, heads, kv int }

func (s shape) params() float64 {
	kv := s.d / s.heads * s.kv
	return float64(2*s.vocab*s.d + s.layers*(2*s.d*s.d+2*s.d*kv+3*s.d*s.ff+2*s.d) + s.d)
}

// evalShapes: small in the default suite; STRONGROOM_EVAL=1 adds a larger model.
func evalShapes() []shape {
	s := []shape{{2, 128, 256, 512, 4, 2}}
	if os.Getenv("STRONGROOM_EVAL") != "" {
		s = append(s, shape{4, 512, 1408, 4096, 8, 4})
	}
	return s
}

// derived is every kind of copy the scanner must find.
func derived(t testing.TB, a, other *Model) []struct {
	name string
	m    *Model
} {
	return []struct {
		name string
		m    *Model
	}{
		{"int8 (gguf q8_0)", attackQuant(t, a, TypeQ8_0)},
		{"4-bit (gguf q4_0)", attackQuant(t, a, TypeQ4_0)},
		{"drift 5%", attackNoise(a, 0.05, 21)},
		{"drift 20%", attackNoise(a, 0.20, 22)},
		{"drift 50%", attackNoise(a, 0.50, 23)},
		{"low-rank 20%", attackLowRank(a, 0.20, 8, 24)},
		{"permuted + signs", attackPermute(a, 25)},
		{"pruned 50%", attackPrune(a, 0.5)},
		{"partial (layer 0)", attackPartial(a)},
		{"merged 50/50 with unrelated", attackAverage(a, other)},
		{"renamed", attackRename(a)},
		{"4-bit + drift 20%", attackQuant(t, attackNoise(a, 0.20, 26), TypeQ4_0)},
	}
}

// TestScanLikeness: every derived copy scores far above 20 unrelated models of the same
// shapes (AUC 1, ≥ 10σ above their mean), and the licensee of the 4-bit + 20% drift copy
// is named among 1,000 candidates with no innocent one named on any copy.
func TestScanLikeness(t *testing.T) {
	for _, sh := range evalShapes() {
		t.Run(fmt.Sprintf("%.1fM", sh.params()/1e6), func(t *testing.T) {
			const model = "m:1"
			orig := synthModel(100, sh.layers, sh.d, sh.ff, sh.vocab, sh.heads, sh.kv)
			mk, _ := ModelKey(testSecret, model)
			a := markedCopy(t, orig, model, "lic-007")
			other := synthModel(999, sh.layers, sh.d, sh.ff, sh.vocab, sh.heads, sh.kv)
			start := time.Now()
			null := Null(orig, 20)
			mean, sd := null.Mean, null.SD
			nullTime := time.Since(start)
			var unrelated, unrelatedInv []float64
			for i := range 20 {
				u := synthModel(uint64(200+i), sh.layers, sh.d, sh.ff, sh.vocab, sh.heads, sh.kv)
				sim := Compare(orig, u)
				unrelated, unrelatedInv = append(unrelated, sim.Score), append(unrelatedInv, sim.Invariant)
			}
			im, is := MeanSD(unrelatedInv)
			maxUI := slices.Max(unrelatedInv)
			t.Logf("second signal (unit-invariant products): 20 unrelated models %.4f ± %.4f, max %.4f", im, is, maxUI)
			um, us := MeanSD(unrelated)
			cands := candidates(t, model, 1000)
			minZ, maxU := math.Inf(1), slices.Max(unrelated)
			t.Logf("%.1fM params: surrogate null %.4f ± %.4f (%v for 20); 20 unrelated models %.4f ± %.4f, max %.4f",
				sh.params()/1e6, mean, sd, nullTime.Round(time.Millisecond), um, us, maxU)
			t.Logf("| copy | score | z vs unrelated | z vs surrogates | licensee named | trace z | invariant | invariant z |")
			for _, d := range derived(t, a, other) {
				sim := Compare(orig, d.m)
				z := (sim.Score - um) / us
				zs := (sim.Score - mean) / sd
				minZ = min(minZ, z)
				tr := Trace(orig, d.m, mk, cands, 1e-6)
				for _, n := range tr.Named {
					if n != "lic-007" {
						t.Errorf("%s: innocent licensee %s named", d.name, n)
					}
				}
				zi := (sim.Invariant - im) / is
				t.Logf("| %s | %.4f | %.0f | %.0f | %v | %.1f | %.4f | %.0f |", d.name, sim.Score, z, zs, tr.Named, tr.Scores[0].Z, sim.Invariant, zi)
				if sim.Invariant <= maxUI {
					t.Errorf("%s: invariant score %.4f not above every unrelated model (max %.4f)", d.name, sim.Invariant, maxUI)
				}
				if sim.Score <= maxU {
					t.Errorf("%s: score %.4f not above every unrelated model (max %.4f): AUC < 1", d.name, sim.Score, maxU)
				}
				if d.name == "4-bit + drift 20%" && (tr.Verdict != VerdictLicensee || tr.Named[0] != "lic-007") {
					t.Errorf("%s: verdict %s %v", d.name, tr.Verdict, tr.Named)
				}
			}
			if minZ < 10 {
				t.Errorf("weakest derived copy is %.1fσ above the unrelated mean, want ≥ 10", minZ)
			}
			t.Logf("AUC 1.0 (every copy above every unrelated model); weakest copy %.0fσ above the unrelated mean", minZ)
		})
	}
}

func TestFind(t *testing.T) {
	dir := t.TempDir()
	m := synthModel(1, 1, 16, 32, 8, 2, 2)
	hf := filepath.Join(dir, "a", "hf")
	os.MkdirAll(filepath.Join(hf, "sub"), 0o755)
	os.WriteFile(filepath.Join(hf, "config.json"), []byte(`{"num_attention_heads":2}`), 0o644)
	os.WriteFile(filepath.Join(hf, "model.safetensors"), toSafetensors(t, m, "F32"), 0o644)
	os.WriteFile(filepath.Join(hf, "sub", "x.safetensors"), []byte("no"), 0o644)
	os.WriteFile(filepath.Join(dir, "a", "q.bin"), toGGUF(t, m, TypeQ8_0), 0o644)
	os.WriteFile(filepath.Join(dir, "loose.safetensors"), toSafetensors(t, m, "BF16"), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o644)
	var got []string
	Find([]string{dir}, func(p string, err error) {
		rel, _ := filepath.Rel(dir, p)
		got = append(got, rel)
	})
	want := []string{"a/hf", "a/q.bin", "loose.safetensors"}
	if !slices.Equal(got, want) {
		t.Fatalf("Find: %v, want %v", got, want)
	}
}

// TestInvariantsNeedNoUnitMatching: the second signal sees through a permutation of every
// layer's MLP units with the function-preserving sign flips (up rows and down columns)
// without any unit alignment — where the tensors themselves no longer look alike — and
// says nothing for an unrelated model.
func TestInvariantsNeedNoUnitMatching(t *testing.T) {
	orig := synthModel(100, 2, 64, 172, 300, 4, 2)
	c := cloneModel(orig)
	rng := rand.New(rand.NewPCG(9, 9))
	for l := 0; c.Get(fmt.Sprintf("model.layers.%d.mlp.up_proj.weight", l)) != nil; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		up, gate, down := c.Get(p+"mlp.up_proj.weight"), c.Get(p+"mlp.gate_proj.weight"), c.Get(p+"mlp.down_proj.weight")
		perm := rng.Perm(up.Rows())
		sign := make([]float32, up.Rows())
		for i := range sign {
			sign[i] = float32(1 - 2*rng.IntN(2))
		}
		up.Data = applyUnits(up.Data, up.Rows(), up.Cols(), perm, sign, false)
		gate.Data = applyUnits(gate.Data, gate.Rows(), gate.Cols(), perm, nil, false)
		down.Data = applyUnits(down.Data, down.Rows(), down.Cols(), perm, sign, true)
	}
	if cos := cosine(orig.Get("model.layers.0.mlp.up_proj.weight").Data, c.Get("model.layers.0.mlp.up_proj.weight").Data); math.Abs(cos) > 0.1 {
		t.Fatalf("the permuted tensor still looks alike (cosine %.3f): the test shows nothing", cos)
	}
	score, per := invariants(orig, c)
	if score < 0.999 || len(per) != 2 {
		t.Fatalf("invariant score %.4f over %d products, want ≈1 over 2", score, len(per))
	}
	if u, _ := invariants(orig, synthModel(7, 2, 64, 172, 300, 4, 2)); math.Abs(u) > 0.2 {
		t.Fatalf("unrelated model's invariant score %.4f", u)
	}
}
