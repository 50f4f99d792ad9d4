package fingerprint

import (
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Likeness (spec). A suspect is compared with a protected model after MatchNames and
// Align: for each 2-D tensor present in both with one shape, the cosine of the two
// weight vectors. The score is the mean cosine over those tensors, weighted by size. An
// unrelated model scores near what an independent model of the same shapes scores after
// the same alignment (alignment picks each unit's best match, so that is above 0); Null
// measures it on k Gaussian surrogates with each tensor's RMS, and a suspect's z is
// (score − their mean) / their standard deviation.
//
// First pass. When Align's probe finds the suspect's units no more like the original's
// than chance (AlignReport.Unrelated), each cosine is first estimated on one run of 256
// weights in sampleEvery. If the sampled score is within sampleBound standard errors of 0
// (its standard error for independent weights: sqrt(Σ w_T² / n_T), w_T a tensor's share
// of the weights and n_T the weights sampled from it), that estimate is the score: it is
// indistinguishable from an unrelated model's, and its z against the full-precision null
// of Null stays under sampleBound·sqrt(sampleEvery) ≈ 5.7, below any "derived" threshold.
// Otherwise every weight is compared. The second signal (invariants) of a sampled model
// is first computed the same way on a cheaper sketch, and in full if it stands out. A
// derived copy's alignment is not "unrelated", so its scores are always exact; Null
// compares every weight of its surrogates.

// TensorScore is one tensor's likeness.
type TensorScore struct {
	Name   string  `json:"name"`
	Cosine float64 `json:"cosine"`
}

// Similarity is a suspect's likeness to one protected model.
type Similarity struct {
	Score   float64       `json:"score"`
	Matched int           `json:"tensors_matched"`
	Renamed int           `json:"tensors_renamed"`
	Align   AlignReport   `json:"alignment"`
	Tensors []TensorScore `json:"tensors"`
	// Invariant is the second signal (invariant.go): the likeness of products of weight
	// matrices that unit permutations and sign flips leave unchanged, per layer in
	// Invariants.
	Invariant  float64       `json:"invariant_score"`
	Invariants []TensorScore `json:"invariants"`
	// Sampled: Score is the first pass's estimate from one run of 256 weights in
	// sampleEvery, for a model the alignment probe called unrelated and that scores like
	// one (Invariant then too comes from a cheaper sketch, unless it stood out).
	Sampled bool `json:"cosines_sampled,omitempty"`
}

// The first pass on a model the alignment probe calls unrelated.
const (
	sampleEvery = 8
	sampleBound = 2.0 // standard errors of the sampled score
)

// Comparable says whether suspect shares at least one 2-D tensor shape with orig.
func Comparable(orig, suspect *Model) bool {
	shapes := map[string]bool{}
	for i := range orig.Tensors {
		if Marked(&orig.Tensors[i]) {
			shapes[shapeKey(orig.Tensors[i].Shape)] = true
		}
	}
	for i := range suspect.Tensors {
		if Marked(&suspect.Tensors[i]) && shapes[shapeKey(suspect.Tensors[i].Shape)] {
			return true
		}
	}
	return false
}

func shapeKey(s []int64) string {
	b := make([]string, len(s))
	for i, d := range s {
		b[i] = itoa(d)
	}
	return strings.Join(b, "x")
}

// Compare scores suspect's likeness to orig.
func Compare(orig, suspect *Model) Similarity { return compare(orig, suspect, true) }

// compare scores suspect's likeness to orig, with the first pass (sampled cosines) when
// firstPass is set and the alignment calls the suspect unrelated.
func compare(orig, suspect *Model, firstPass bool) Similarity {
	s, renamed := MatchNames(orig, suspect)
	s, rep := Align(orig, s)
	sim := Similarity{Renamed: renamed, Align: rep}
	type pair struct{ o, t *Tensor }
	var pairs []pair
	for i := range orig.Tensors {
		o := &orig.Tensors[i]
		t := s.Get(o.Name)
		if Marked(o) && t != nil && slices.Equal(o.Shape, t.Shape) {
			pairs = append(pairs, pair{o, t})
		}
	}
	var total float64
	for _, p := range pairs {
		total += float64(len(p.o.Data))
	}
	sim.Matched = len(pairs)
	sim.Tensors = make([]TensorScore, len(pairs))
	score := func(stride int) (mean, se float64) {
		ns := make([]int, len(pairs))
		parallel(len(pairs), func(i int) error {
			c, n := cosineRuns(pairs[i].o.Data, pairs[i].t.Data, stride)
			sim.Tensors[i], ns[i] = TensorScore{pairs[i].o.Name, c}, n
			return nil
		})
		var v float64
		for i, p := range pairs {
			w := float64(len(p.o.Data)) / total
			mean += sim.Tensors[i].Cosine * w
			v += w * w / float64(max(ns[i], 1))
		}
		return mean, math.Sqrt(v)
	}
	if total > 0 && firstPass && rep.Unrelated {
		if mean, se := score(sampleEvery); math.Abs(mean) <= sampleBound*se {
			sim.Score, sim.Sampled = mean, true
		}
	}
	if total > 0 && !sim.Sampled {
		sim.Score, _ = score(1)
	}
	if sim.Sampled {
		if inv, per, se := invariants(orig, s, true); math.Abs(inv) <= sampleBound*se {
			sim.Invariant, sim.Invariants = inv, per
			return sim
		}
	}
	sim.Invariant, sim.Invariants, _ = invariants(orig, s, false)
	return sim
}

// Surrogate is an unrelated model shaped like m: Gaussian weights with each tensor's RMS.
func Surrogate(m *Model, seed uint64) *Model {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	out := &Model{Format: "surrogate", Heads: m.Heads, KVHeads: m.KVHeads, Tensors: make([]Tensor, len(m.Tensors))}
	for i, t := range m.Tensors {
		d := make([]float32, len(t.Data))
		s := RMS(t.Data)
		for k := range d {
			d[k] = float32(rng.NormFloat64() * s)
		}
		out.Tensors[i] = Tensor{Name: t.Name, Shape: t.Shape, Data: d}
	}
	return out
}

// NullStats is what unrelated models score: the mean and standard deviation of both
// signals over k surrogates.
type NullStats struct {
	Mean, SD       float64 // Score
	InvMean, InvSD float64 // Invariant
	K              int
}

// Null measures Compare's two signals on k surrogates of orig.
func Null(orig *Model, k int) NullStats {
	xs, is := make([]float64, k), make([]float64, k)
	for i := range xs {
		sim := compare(orig, Surrogate(orig, uint64(i+1)), false)
		xs[i], is[i] = sim.Score, sim.Invariant
	}
	n := NullStats{K: k}
	n.Mean, n.SD = MeanSD(xs)
	n.InvMean, n.InvSD = MeanSD(is)
	return n
}

// MeanSD is the sample mean and standard deviation.
func MeanSD(xs []float64) (mean, sd float64) {
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	for _, x := range xs {
		sd += (x - mean) * (x - mean)
	}
	if len(xs) > 1 {
		sd = math.Sqrt(sd / float64(len(xs)-1))
	}
	return mean, sd
}

// Find walks paths and calls fn for each model it finds: a Hugging Face directory
// (config.json and *.safetensors; not descended into), a *.safetensors or *.gguf file, or a
// file that starts with the GGUF magic. A path that cannot be read is passed with its error.
func Find(paths []string, fn func(path string, err error)) {
	for _, root := range paths {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				fn(p, err)
				if d != nil && d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if d.IsDir() {
				if isHFDir(p) {
					fn(p, nil)
					return fs.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			if strings.HasSuffix(p, ".safetensors") || strings.HasSuffix(p, ".gguf") || hasGGUFMagic(p) {
				fn(p, nil)
			}
			return nil
		})
		if err != nil {
			fn(root, err)
		}
	}
}

func isHFDir(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		return false
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	return len(m) > 0
}

func hasGGUFMagic(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [4]byte
	n, _ := f.Read(b[:])
	return n == 4 && string(b[:]) == "GGUF"
}
