package fingerprint

import (
	"math"
	"slices"
	"strings"
)

// Detection (spec). The suspect is first put in the original's terms: names mapped,
// renamed tensors matched by shape and content, hidden units aligned (Align). For every
// marked tensor T present in both, with the same shape, the residual is r = S − βO, β the
// least-squares scale of S on O (so a rescaled copy keeps its mark). Over T's keyed subset,
// the residual is weighted by w_T = a_T / mean(r²) (a_T the mark's amplitude; a matched
// filter against T's own noise). A licensee's score is
//
//	z = Σ w_T r_i s_i / sqrt(Σ w_T² r_i²)
//
// over every subset element i. For a licensee whose mark is not in the copy, the signs s
// are independent of r (they come from a key the copy never saw), so given r, z is a sum
// of independent ±1 terms with fixed weights and Hoeffding's inequality bounds
// P(z ≥ t) ≤ exp(−t²/2) whatever the residual is: fine-tuning, quantization, other
// licensees' marks. The p-value reported is that bound times the number of licensees
// tested (Bonferroni), so the chance that any innocent licensee is named is at most the
// threshold, for any copy.

// residualPart is one tensor's weighted residual over its keyed subset.
type residualPart struct {
	name string
	v    []float32
}

// Candidate is a licensee to test.
type Candidate struct {
	Licensee string
	Key      Key
}

// Score is one licensee's result.
type Score struct {
	Licensee string  `json:"licensee"`
	Z        float64 `json:"z"`
	P        float64 `json:"p_value"` // Hoeffding bound × candidates tested
	Log10P   float64 `json:"log10_p"` // the same, as a power of ten (P underflows past 1e-308)
}

// Verdicts of a trace.
const (
	VerdictLicensee  = "licensee"
	VerdictCollusion = "collusion suspected"
	VerdictNone      = "no licensee's mark found"
)

// TraceResult is the outcome of tracing a copy.
type TraceResult struct {
	Verdict    string      `json:"verdict"`
	Named      []string    `json:"named,omitempty"` // licensees whose mark is found (p ≤ threshold)
	Threshold  float64     `json:"threshold"`
	Tensors    int         `json:"tensors_compared"`
	Elements   int         `json:"marked_elements_compared"`
	Renamed    int         `json:"tensors_renamed"`
	Align      AlignReport `json:"alignment"`
	Candidates int         `json:"candidates"`
	Scores     []Score     `json:"scores"` // best first
}

// Trace scores every candidate's mark in suspect against orig; threshold is the
// corrected p-value at or under which a licensee is named (default 1e-6).
func Trace(orig, suspect *Model, model Key, cands []Candidate, threshold float64) *TraceResult {
	if threshold <= 0 {
		threshold = 1e-6
	}
	s, renamed := MatchNames(orig, suspect)
	s, rep := Align(orig, s)
	res := &TraceResult{Threshold: threshold, Renamed: renamed, Align: rep, Candidates: len(cands)}
	// the weighted residual over every subset element, tensor by tensor (in parallel:
	// drawing the subsets is a ChaCha8 draw per weight)
	type pair struct{ o, t *Tensor }
	var pairs []pair
	for i := range orig.Tensors {
		o := &orig.Tensors[i]
		if t := s.Get(o.Name); Marked(o) && t != nil && slices.Equal(o.Shape, t.Shape) {
			pairs = append(pairs, pair{o, t})
		}
	}
	parts := make([]residualPart, len(pairs))
	dens := make([]float64, len(pairs))
	parallel(len(pairs), func(i int) error {
		o, t := pairs[i].o, pairs[i].t
		var so, oo float64
		for k := range o.Data {
			so += float64(t.Data[k]) * float64(o.Data[k])
			oo += float64(o.Data[k]) * float64(o.Data[k])
		}
		beta := float32(so / max(oo, 1e-30))
		sub := model.Subset(o.Name, len(o.Data))
		r := make([]float32, len(sub))
		var rr float64
		for j, idx := range sub {
			r[j] = t.Data[idx] - beta*o.Data[idx]
			rr += float64(r[j]) * float64(r[j])
		}
		if rr == 0 || len(sub) == 0 {
			return nil
		}
		w := Amplitude * RMS(o.Data) / (rr / float64(len(sub)))
		for j := range r {
			r[j] *= float32(w)
		}
		dens[i], parts[i] = w*w*rr, residualPart{o.Name, r}
		return nil
	})
	var den float64
	kept := parts[:0]
	for i, p := range parts {
		if p.v == nil {
			continue
		}
		den += dens[i]
		kept = append(kept, p)
		res.Tensors++
		res.Elements += len(p.v)
	}
	parts = kept
	den = math.Sqrt(den)
	sums := signedSums(parts, cands)
	for ci, c := range cands {
		num := sums[ci]
		z := 0.0
		if den > 0 {
			z = num / den
		}
		lp := 0.0
		if z > 0 {
			lp = math.Min(0, math.Log10(float64(len(cands)))-z*z/2/math.Ln10)
		}
		res.Scores = append(res.Scores, Score{Licensee: c.Licensee, Z: z, P: math.Pow(10, lp), Log10P: lp})
	}
	slices.SortFunc(res.Scores, func(a, b Score) int {
		if a.Z != b.Z {
			if a.Z > b.Z {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Licensee, b.Licensee)
	})
	for _, sc := range res.Scores {
		if sc.P <= threshold {
			res.Named = append(res.Named, sc.Licensee)
		}
	}
	switch len(res.Named) {
	case 0:
		res.Verdict = VerdictNone
	case 1:
		res.Verdict = VerdictLicensee
	default:
		res.Verdict = VerdictCollusion
	}
	return res
}

// MatchNames returns suspect with tensors whose names orig lacks renamed to the
// original tensor of the same shape they correlate with most (|r| > 0.5), and how many
// were renamed.
func MatchNames(orig, suspect *Model) (*Model, int) {
	out := *suspect
	out.Tensors = slices.Clone(suspect.Tensors)
	have := map[string]bool{}
	for _, t := range out.Tensors {
		have[t.Name] = true
	}
	n := 0
	for i := range out.Tensors {
		t := &out.Tensors[i]
		if orig.Get(t.Name) != nil {
			continue
		}
		best, bestC := "", 0.5
		for k := range orig.Tensors {
			o := &orig.Tensors[k]
			if have[o.Name] || !slices.Equal(o.Shape, t.Shape) {
				continue
			}
			if c := math.Abs(cosine(o.Data, t.Data)); c > bestC {
				best, bestC = o.Name, c
			}
		}
		if best != "" {
			t.Name, have[best] = best, true
			n++
		}
	}
	return &out, n
}

func cosine(a, b []float32) float64 {
	c, _ := cosineRuns(a, b, 1)
	return c
}

// cosineRuns is the cosine over every stride-th run of 256 elements (all of them when
// stride is 1), and how many elements that was.
func cosineRuns(a, b []float32, stride int) (float64, int) {
	// one pass, float32 partial sums over short runs (exact enough, and twice as fast)
	var d, aa, bb float64
	n := 0
	for i := 0; i < len(a); i += 256 * stride {
		x, y := a[i:min(i+256, len(a))], b[i:min(i+256, len(a))]
		var pd, pa, pb float32
		for k := range x {
			pd += x[k] * y[k]
			pa += x[k] * x[k]
			pb += y[k] * y[k]
		}
		d, aa, bb, n = d+float64(pd), aa+float64(pa), bb+float64(pb), n+len(x)
	}
	if aa == 0 || bb == 0 {
		return 0, n
	}
	return d / math.Sqrt(aa*bb), n
}

func dot64(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}
