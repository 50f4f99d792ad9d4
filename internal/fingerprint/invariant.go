package fingerprint

import (
	"math"
	"math/rand/v2"
	"slices"
)

// Invariants (spec). The second likeness signal: a product of a layer's weight matrices
// that a permutation of its MLP units, with the function-preserving sign flips (an up row
// and its down column together; the gate's cannot be flipped through SiLU), leaves
// unchanged — down·up (d × d) — so that no unit matching is needed, only the residual
// stream's alignment that Align does first. (down·gate is not: a flipped down column
// changes it.) Each product P is sketched as S·P·R = (S·down)·(up·R) with a fixed
// Gaussian R (d × sketchCols, seeded by the shape) and S a fixed choice of at most
// sketchRows of down's rows, which costs ff·(d + sketchRows)·sketchCols per product
// instead of d²·ff. A layer's invariant likeness is the cosine of the two
// models' sketches; the model's is their mean weighted by size. Unrelated models' sketches
// are independent, so their cosine is near 0 whatever alignment did. Attention (o·v per
// head) is not included.

const (
	sketchCols = 4
	sketchRows = 128
)

// invariantPairs are the (left, right) tensors whose product is unit-invariant.
var invariantPairs = [][2]string{
	{"mlp.down_proj.weight", "mlp.up_proj.weight"},
}

// sketchR is the fixed right factor for inner dimension d, stored by column (sketchCols
// vectors of length d).
func sketchR(d int) []float32 {
	rng := rand.New(rand.NewPCG(uint64(d), 0x1a7a))
	r := make([]float32, d*sketchCols)
	for i := range r {
		r[i] = float32(rng.NormFloat64())
	}
	return r
}

// sketch returns S·left·(right·R) for left [d, f] and right [f, d], row-major, with R's
// first k rows (all d of them but in the first pass: right·R then reads k of each row's d
// weights). r is stored by column; the sketch's four columns are computed in one pass
// over each row (dot4), so that each weight is loaded once.
func sketch(left, right *Tensor, r []float32, k int) []float32 {
	f, d := right.Rows(), right.Cols()
	rt := interleave4(r, d)[:4*k]
	mid := make([]float32, sketchCols*f) // right·R, row i's four values together
	for i := range f {
		mid[4*i], mid[4*i+1], mid[4*i+2], mid[4*i+3] = dot4(right.Data[i*d:i*d+k], rt)
	}
	step := max(1, left.Rows()/sketchRows)
	var out []float32
	for i := 0; i < left.Rows(); i += step {
		a, b, c, e := dot4(left.Data[i*f:(i+1)*f], mid)
		out = append(out, a, b, c, e)
	}
	return out
}

// dot4 computes the sketch's columns together: there must be four.
var _ = [1]struct{}{}[sketchCols-4]

// interleave4 turns four column vectors of length n into n rows of four.
func interleave4(cols []float32, n int) []float32 {
	out := make([]float32, 4*n)
	for c := range 4 {
		for k, v := range cols[c*n : (c+1)*n] {
			out[4*k+c] = v
		}
	}
	return out
}

// dot4 is the dot product of x with each column of m, an n × 4 row-major matrix.
func dot4(x, m []float32) (s0, s1, s2, s3 float32) {
	m = m[:4*len(x)]
	for k, v := range x {
		q := m[4*k : 4*k+4 : 4*k+4]
		s0 += v * q[0]
		s1 += v * q[1]
		s2 += v * q[2]
		s3 += v * q[3]
	}
	return
}

// dot32 is the dot product of equal-length vectors, four partial sums at a time.
func dot32(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return s0 + s1 + s2 + s3
}

// invariants compares the unit-invariant products of orig and an aligned suspect: one
// score per layer and product present in both with the same shapes, their mean weighted
// by size (0 when there are none), and that mean's standard error for independent
// weights (sqrt(Σ w² / sketch length)). In the first pass R keeps its first
// d/sampleEvery rows (at least 32): the products stay unit-invariant (R acts on the
// residual stream, which is aligned), and an unrelated model's score has the same
// distribution, at an eighth of the cost of right·R.
func invariants(orig, aligned *Model, firstPass bool) (score float64, per []TensorScore, se float64) {
	type job struct {
		name           string
		ol, or, sl, sr *Tensor
	}
	var jobs []job
	for l := 0; ; l++ {
		p := "model.layers." + itoa(int64(l)) + "."
		if orig.Get(p+"input_layernorm.weight") == nil && orig.Get(p+"mlp.up_proj.weight") == nil {
			break
		}
		for _, pr := range invariantPairs {
			ol, or := orig.Get(p+pr[0]), orig.Get(p+pr[1])
			sl, sr := aligned.Get(p+pr[0]), aligned.Get(p+pr[1])
			if ol == nil || or == nil || sl == nil || sr == nil || len(ol.Shape) != 2 || len(or.Shape) != 2 ||
				!slices.Equal(ol.Shape, sl.Shape) || !slices.Equal(or.Shape, sr.Shape) || ol.Cols() != or.Rows() {
				continue
			}
			jobs = append(jobs, job{p + pr[0] + "·" + pr[1], ol, or, sl, sr})
		}
	}
	scores := make([]TensorScore, len(jobs))
	lens := make([]int, len(jobs))
	rs := map[int][]float32{}
	for _, j := range jobs {
		if rs[j.or.Cols()] == nil {
			rs[j.or.Cols()] = sketchR(j.or.Cols())
		}
	}
	parallel(len(jobs), func(i int) error {
		j := jobs[i]
		d := j.or.Cols()
		k := d
		if firstPass {
			k = min(d, max(32, d/sampleEvery))
		}
		o := sketch(j.ol, j.or, rs[d], k)
		scores[i], lens[i] = TensorScore{j.name, cosine(o, sketch(j.sl, j.sr, rs[d], k))}, len(o)
		return nil
	})
	var num, den, v float64
	for i, j := range jobs {
		w := float64(len(j.ol.Data) + len(j.or.Data))
		num += scores[i].Cosine * w
		den += w
	}
	if den == 0 {
		return 0, scores, 0
	}
	for i, j := range jobs {
		w := float64(len(j.ol.Data)+len(j.or.Data)) / den
		v += w * w / float64(max(lens[i], 1))
	}
	return num / den, scores, math.Sqrt(v)
}
