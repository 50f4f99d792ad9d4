package watermark

import (
	"bytes"
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/strongroom/strongroom/internal/testenv"
)

func tkeys(t testing.TB, tenants ...string) []*Tournament {
	var out []*Tournament
	for _, tn := range tenants {
		k, err := DeriveTournament(bytes.Repeat([]byte{9}, 32), tn)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	return out
}

// entropyLogits draws normalized log-probabilities over vocab whose entropy is about
// target nats (a scale found once by bisection), and returns them with their entropy.
func entropyLogits(rng *rand.Rand, vocab int, scale float64, lp []float64) float64 {
	for i := range lp {
		lp[i] = rng.NormFloat64() * scale
	}
	normalize(lp)
	h := 0.0
	for _, v := range lp {
		h -= math.Exp(v) * v
	}
	return h
}

func normalize(lp []float64) {
	mx := math.Inf(-1)
	for _, v := range lp {
		mx = max(mx, v)
	}
	z := 0.0
	for _, v := range lp {
		z += math.Exp(v - mx)
	}
	for i := range lp {
		lp[i] -= mx + math.Log(z)
	}
}

func draw(rng *rand.Rand, lp []float64) int {
	u, acc := rng.Float64(), 0.0
	for i, v := range lp {
		acc += math.Exp(v)
		if u <= acc {
			return i
		}
	}
	return len(lp) - 1
}

// tsample generates n tokens from synthetic distributions of the given logit scale,
// through the tournament when k is set; it returns the tokens and the mean entropy.
func tsample(rng *rand.Rand, k *Tournament, n, vocab int, scale float64) ([]int, float64) {
	toks := []int{rng.IntN(vocab), rng.IntN(vocab), rng.IntN(vocab), rng.IntN(vocab)}
	lp := make([]float64, vocab)
	hs := 0.0
	for range n {
		hs += entropyLogits(rng, vocab, scale, lp)
		if k != nil {
			k.Apply(toks, lp)
		}
		toks = append(toks, draw(rng, lp))
	}
	return toks, hs / float64(n)
}

// TestTournamentRates: TPR at T = 200 with ≥ 2.3 nats per token, after 20% random
// replacement, tenant attribution, and FPR near nominal — the targets, on
// synthetic distributions of controlled entropy.
func TestTournamentRates(t *testing.T) {
	testenv.StatisticsOnly(t)
	ks := tkeys(t, "acme", "globex", "initech")
	rng := rand.New(rand.NewPCG(3, 4))
	const vocab, runs, alpha = 1000, 600, 1e-3
	scale := 4.0 // ≈ 2.3–2.5 nats per token over 1,000 tokens
	tp, tpNoisy, named, fp := 0, 0, 0, 0
	var ent float64
	for range runs {
		toks, h := tsample(rng, ks[0], 200, vocab, scale)
		ent += h
		if ks[0].Detect(toks).Verdict(alpha) {
			tp++
		}
		noisy := replaceAtRandom(rng, toks, 0.2, vocab)
		if ks[0].Detect(noisy).Verdict(alpha) {
			tpNoisy++
		}
		best, bestP := "", 2.0
		for _, k := range ks {
			if s := k.Detect(toks); s.P*3 < bestP {
				best, bestP = k.Tenant, s.P*3
			}
		}
		if best == "acme" && bestP <= alpha {
			named++
		}
		plain, _ := tsample(rng, nil, 200, vocab, scale)
		if ks[0].Detect(plain).Verdict(alpha) {
			fp++
		}
	}
	ent /= runs
	t.Logf("entropy %.2f nats/token: TPR %.3f, after 20%% replacement %.3f, named %.3f, FPR %.3f (%d runs, α=%g)",
		ent, float64(tp)/runs, float64(tpNoisy)/runs, float64(named)/runs, float64(fp)/runs, runs, alpha)
	if ent < 2.3 {
		t.Fatalf("entropy %.2f below the target's 2.3 nats", ent)
	}
	if float64(tp)/runs < 0.98 || float64(tpNoisy)/runs < 0.95 || float64(named)/runs < 0.95 || fp > 3 {
		t.Fatalf("rates below target")
	}
}

// TestTournamentNonDistorting: averaged over keys (contexts), the winner's distribution is
// the model's own (restricted to the top K).
func TestTournamentNonDistorting(t *testing.T) {
	k := tkeys(t, "acme")[0]
	rng := rand.New(rand.NewPCG(5, 6))
	base := make([]float64, 50)
	entropyLogits(rng, len(base), 1.5, base)
	avg := make([]float64, len(base))
	const n = 20000
	lp := make([]float64, len(base))
	for i := range n {
		copy(lp, base)
		k.Apply([]int{i, i * 7, i * 13, i * 31}, lp)
		for j, v := range lp {
			avg[j] += math.Exp(v) / n
		}
	}
	worst := 0.0
	for j := range base {
		worst = max(worst, math.Abs(avg[j]-math.Exp(base[j])))
	}
	if worst > 0.01 {
		t.Fatalf("average winner distribution differs from the model's by %.4f", worst)
	}
}

func TestTournamentSpliceAndThreshold(t *testing.T) {
	k := tkeys(t, "acme")[0]
	rng := rand.New(rand.NewPCG(7, 8))
	wm, _ := tsample(rng, k, 200, 1000, 2.6)
	a, _ := tsample(rng, nil, 2400, 1000, 2.6)
	b, _ := tsample(rng, nil, 2400, 1000, 2.6)
	doc := append(append(append([]int{}, a...), wm...), b...)
	if s := k.Detect(doc); s.Verdict(1e-3) {
		t.Logf("whole document already detected: %v", s)
	}
	start, s := k.Window(doc, 200)
	if !s.Verdict(1e-3) || start < len(a)-200 || start > len(a)+200 {
		t.Fatalf("splice: window at %d (watermark at %d): %v", start, len(a), s)
	}
	// The per-length threshold falls with length towards 0.5.
	if th200, th2000 := k.Threshold(200, 1e-3), k.Threshold(2000, 1e-3); !(th200 > th2000 && th2000 > 0.5) {
		t.Fatalf("thresholds %g, %g", th200, th2000)
	}
	// Repeated context+token pairs are scored once: a 20-token span written twice scores
	// 19 + H tokens (only the first H of the copy have new contexts).
	span := make([]int, 20)
	for i := range span {
		span[i] = 100 + i
	}
	if s := k.Detect(append(append([]int{}, span...), span...)); s.Scored != 19+k.H {
		t.Fatalf("scored %d of a repeated span, want %d", s.Scored, 19+k.H)
	}
}

// BenchmarkTournamentFPR: false-positive rate over 10^6 unwatermarked 200-token texts at
// α = 1e-3 and 1e-4 (per-length threshold on the g-value sum).
func BenchmarkTournamentFPR(b *testing.B) {
	k := tkeys(b, "acme")[0]
	rng := rand.New(rand.NewPCG(9, 10))
	const texts, T = 1_000_000, 200
	n := T * k.Layers
	thr := map[float64]int{}
	for _, a := range []float64{1e-3, 1e-4} {
		thr[a] = int(math.Ceil(k.Threshold(T, a) * float64(n)))
	}
	for b.Loop() {
		hits := map[float64]int{}
		toks := make([]int, T+1)
		for range texts {
			for i := range toks {
				toks[i] = rng.IntN(50000)
			}
			s := k.Detect(toks)
			sum := int(math.Round(s.Mean * float64(s.Scored*k.Layers)))
			for a, th := range thr {
				if sum >= th*s.Scored/T {
					hits[a]++
				}
			}
		}
		for a, h := range hits {
			b.ReportMetric(float64(h)/texts, "fpr@"+map[float64]string{1e-3: "1e-3", 1e-4: "1e-4"}[a])
		}
	}
}

// BenchmarkTournamentApply: sampling-time cost per token over an 8,192-token vocabulary.
func BenchmarkTournamentApply(b *testing.B) {
	k := tkeys(b, "acme")[0]
	rng := rand.New(rand.NewPCG(11, 12))
	lp := make([]float64, 8192)
	entropyLogits(rng, len(lp), 2.6, lp)
	buf := make([]float64, len(lp))
	ctx := []int{1, 2, 3, 4}
	for i := 0; b.Loop(); i++ {
		copy(buf, lp)
		ctx[3] = i
		k.Apply(ctx, buf)
	}
}

func TestTopIndices(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{1, 5, 64, 1000} {
		lp := make([]float64, n)
		for i := range lp {
			lp[i] = rng.NormFloat64()
		}
		k := min(64, n)
		got := topIndices(lp, k)
		sorted := make([]int, n)
		for i := range sorted {
			sorted[i] = i
		}
		slices.SortFunc(sorted, func(a, b int) int { return cmp.Compare(lp[b], lp[a]) })
		if !slices.Equal(got, sorted[:k]) {
			t.Fatalf("n=%d: top indices differ", n)
		}
	}
}
