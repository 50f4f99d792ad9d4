package fingerprint

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestSignedSumsMatchSigns: the table look-up scoring gives Σ v_j s_j with the signs of
// Key.Signs — the signs Embed adds — for lengths on and off the chunk, word and group
// boundaries.
func TestSignedSumsMatchSigns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var parts []residualPart
	for i, n := range []int{1, 7, 8, 63, 64, 65, signChunk - 1, signChunk, signChunk + 9, 3*signChunk + 70} {
		v := make([]float32, n)
		for k := range v {
			v[k] = float32(rng.NormFloat64())
		}
		parts = append(parts, residualPart{"t" + itoa(int64(i)), v})
	}
	cands := candidates(t, "m:1", 5)
	got := signedSums(parts, cands)
	for c, cand := range cands {
		var want, scale float64
		for _, p := range parts {
			s := cand.Key.Signs(p.name, len(p.v))
			for j, x := range p.v {
				want += float64(x) * float64(s[j])
				scale += math.Abs(float64(x))
			}
		}
		if math.Abs(got[c]-want) > 1e-5*scale {
			t.Errorf("candidate %d: signed sum %g, want %g", c, got[c], want)
		}
	}
}
