package fingerprint

import (
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// Hidden units can be permuted and sign-flipped without changing what a network computes
// (or, for most of them, while changing it little), which moves every weight and would
// hide both the mark and the likeness. Align undoes it before anything is compared: the
// residual stream's dimensions are matched on the embedding's columns, then, layer by
// layer, the attention rows (q, k, v with o's columns) and the MLP units (gate and up rows
// with down's columns), each unit (a row, or a column of o and down) to the original unit it is most like (|cosine|, a
// one-to-one assignment), its sign from that cosine.

// AlignReport says what Align changed.
type AlignReport struct {
	Residual bool `json:"residual_permuted"` // the residual stream's dimensions were permuted
	Groups   int  `json:"unit_groups_permuted"`
	Flips    int  `json:"signs_flipped"`
	// Unrelated: a sample of units matched no original unit better than chance, so the
	// alignment stopped there (the weights are not a permuted copy).
	Unrelated bool `json:"unrelated,omitempty"`
}

// unit groups of a Llama layer: units are rows (or columns when col) of these tensors.
var unitGroups = []struct{ rows, cols []string }{
	{[]string{"self_attn.q_proj.weight"}, nil},
	{[]string{"self_attn.k_proj.weight"}, nil},
	{[]string{"self_attn.v_proj.weight"}, nil}, // v rows feed several heads' o columns under GQA
	{nil, []string{"self_attn.o_proj.weight"}},
	{[]string{"mlp.gate_proj.weight", "mlp.up_proj.weight"}, []string{"mlp.down_proj.weight"}},
}

// residual side of each tensor: columns (inputs) or rows (outputs) or the whole vector.
func residualSide(name string) (cols, rows, vec bool) {
	switch {
	case strings.HasSuffix(name, "o_proj.weight"), strings.HasSuffix(name, "down_proj.weight"):
		return false, true, false
	case strings.HasSuffix(name, "norm.weight"):
		return false, false, true
	}
	return true, false, false
}

// Align returns suspect with its hidden units put back in orig's order and sign (tensors
// are copied only where changed).
func Align(orig, suspect *Model) (*Model, AlignReport) {
	var rep AlignReport
	out := *suspect
	out.Tensors = slices.Clone(suspect.Tensors)
	get := func(m *Model, name string) *Tensor {
		t := m.Get(name)
		if t == nil || len(t.Shape) == 0 {
			return nil
		}
		return t
	}
	// residual stream
	var perm []int
	var sign []float32
	for _, ref := range []string{"model.embed_tokens.weight", "lm_head.weight"} {
		o, s := get(orig, ref), get(&out, ref)
		if o == nil || s == nil || len(o.Data) != len(s.Data) || len(o.Shape) != 2 {
			continue
		}
		rows := min(o.Rows(), matchDims) // units are compared on this many entries
		ov, sv := transpose(o.Data[:rows*o.Cols()], rows, o.Cols()), transpose(s.Data[:rows*s.Cols()], rows, s.Cols())
		var unrelated bool
		perm, sign, unrelated = matchUnits([][]float32{ov}, [][]float32{sv}, o.Cols(), rows)
		if unrelated {
			rep.Unrelated = true
			return &out, rep
		}
		break
	}
	if perm != nil && !isIdentity(perm, sign) {
		rep.Residual = true
		d := len(perm)
		for i := range out.Tensors {
			t := out.Tensors[i]
			cols, rows, vec := residualSide(t.Name)
			switch {
			case vec && len(t.Data) == d:
				t.Data = applyUnits(t.Data, 1, d, perm, nil, true)
			case cols && len(t.Shape) == 2 && t.Cols() == d:
				t.Data = applyUnits(t.Data, t.Rows(), d, perm, sign, true)
			case rows && len(t.Shape) == 2 && t.Rows() == d:
				t.Data = applyUnits(t.Data, d, t.Cols(), perm, sign, false)
			default:
				continue
			}
			out.Tensors[i] = t
		}
	}
	// per-layer units
	for l := 0; ; l++ {
		p := "model.layers." + itoa(int64(l)) + "."
		if get(orig, p+"input_layernorm.weight") == nil && get(orig, p+"mlp.up_proj.weight") == nil {
			break
		}
		for _, g := range unitGroups {
			var ou, su [][]float32
			var dims []int
			n := -1
			ok := true
			add := func(o, s *Tensor, col bool) {
				if o == nil || s == nil || len(o.Shape) != 2 || !slices.Equal(o.Shape, s.Shape) {
					ok = false
					return
				}
				r, c := o.Rows(), o.Cols()
				od, sd := o.Data, s.Data
				if col {
					r, c = c, r
					od, sd = transpose(od, o.Rows(), o.Cols()), transpose(sd, s.Rows(), s.Cols())
				}
				if n >= 0 && r != n {
					ok = false
				}
				n = r
				ou, su, dims = append(ou, od), append(su, sd), append(dims, c)
			}
			for _, name := range g.rows {
				add(get(orig, p+name), get(&out, p+name), false)
			}
			for _, name := range g.cols {
				add(get(orig, p+name), get(&out, p+name), true)
			}
			if !ok || n <= 0 {
				continue
			}
			// each tensor of the group gets the group's permutation and its own signs
			perm, unrelated := matchUnitsDims(ou, su, dims, n)
			if unrelated {
				rep.Unrelated = true
				return &out, rep
			}
			changed := false
			names := append(slices.Clone(g.rows), g.cols...)
			for k, name := range names {
				sg := unitSigns(ou[k], su[k], dims[k], perm)
				if isIdentity(perm, sg) {
					continue
				}
				changed = true
				for _, x := range sg {
					if x < 0 {
						rep.Flips++
					}
				}
				t := get(&out, p+name)
				idx := slices.IndexFunc(out.Tensors, func(x Tensor) bool { return x.Name == p+name })
				nt := *t
				if k < len(g.rows) {
					nt.Data = applyUnits(t.Data, n, dims[k], perm, sg, false)
				} else {
					nt.Data = applyUnits(t.Data, dims[k], n, perm, sg, true)
				}
				out.Tensors[idx] = nt
			}
			if changed && !isIdentity(perm, nil) {
				rep.Groups++
			}
		}
	}
	return &out, rep
}

// Unit matching: units compared on their first matchDims entries; probeUnits sampled to
// tell a permuted copy (likeness near 1) from unrelated weights (the best of n random
// cosines over 256 entries is about sqrt(2 ln n / 256) ≈ 0.25 for n = 2,000).
const (
	matchDims     = 256
	probeUnits    = 64
	probeLikeness = 0.5
)

func isIdentity(perm []int, sign []float32) bool {
	for i, p := range perm {
		if p != i || (sign != nil && sign[i] < 0) {
			return false
		}
	}
	return true
}

// transpose copies a rows×cols matrix into cols×rows.
func transpose(x []float32, rows, cols int) []float32 {
	out := make([]float32, len(x))
	for r := range rows {
		for c := range cols {
			out[c*rows+r] = x[r*cols+c]
		}
	}
	return out
}

// applyUnits moves suspect unit j to position perm[j] times sign[j]; units are rows of a
// rows×cols matrix, or columns when col.
func applyUnits(x []float32, rows, cols int, perm []int, sign []float32, col bool) []float32 {
	out := make([]float32, len(x))
	for r := range rows {
		for c := range cols {
			v := x[r*cols+c]
			rr, cc := r, c
			u := r
			if col {
				cc, u = perm[c], c
			} else {
				rr = perm[r]
			}
			if sign != nil && sign[u] < 0 {
				v = -v
			}
			out[rr*cols+cc] = v
		}
	}
	return out
}

func matchUnits(o, s [][]float32, n, dim int) ([]int, []float32, bool) {
	perm, unrelated := matchUnitsDims(o, s, []int{dim}, n)
	if unrelated {
		return nil, nil, true
	}
	return perm, unitSigns(o[0], s[0], dim, perm), false
}

// unitSigns is the sign of the cosine between each suspect unit and the original unit it
// was matched to.
func unitSigns(o, s []float32, dim int, perm []int) []float32 {
	sg := make([]float32, len(perm))
	for j, k := range perm {
		sg[j] = 1
		if dot(s[j*dim:(j+1)*dim], o[k*dim:(k+1)*dim]) < 0 {
			sg[j] = -1
		}
	}
	return sg
}

func dot(a, b []float32) float64 { return float64(dot32(a, b)) }

// matchUnitsDims assigns each of the n suspect units (rows of s[k], dims[k] wide) to an
// original unit: the sum over k of |cosine| is the likeness; identity when the diagonal
// already matches well, else each unit's best match, made one-to-one greedily. unrelated
// is true (and no permutation made) when a sample of probeUnits suspect units matches
// original units no better than chance (mean best likeness under probeLikeness).
func matchUnitsDims(o, s [][]float32, dims []int, n int) (perm []int, unrelated bool) {
	// Units are compared on their first matchDims entries: enough to tell a unit from
	// hundreds of others, and it bounds the n² comparisons' cost on wide layers.
	norm := func(x []float32, dim int) []float32 {
		use := min(dim, matchDims)
		out := make([]float32, n*use)
		for u := range n {
			v := x[u*dim : u*dim+use]
			l := math.Sqrt(dot(v, v))
			if l == 0 {
				l = 1
			}
			for i := range v {
				out[u*use+i] = float32(float64(v[i]) / l)
			}
		}
		return out
	}
	on, sn := make([][]float32, len(o)), make([][]float32, len(s))
	dims = slices.Clone(dims)
	for k := range o {
		on[k], sn[k] = norm(o[k], dims[k]), norm(s[k], dims[k])
		dims[k] = min(dims[k], matchDims)
	}
	sim := func(j, i int) float64 {
		var t float64
		for k := range on {
			t += math.Abs(dot(sn[k][j*dims[k]:(j+1)*dims[k]], on[k][i*dims[k]:(i+1)*dims[k]]))
		}
		return t / float64(len(on))
	}
	perm = make([]int, n)
	var diag float64
	for j := range n {
		perm[j] = j
		diag += sim(j, j)
	}
	if diag/float64(n) > 0.5 {
		return perm, false
	}
	step := max(1, n/probeUnits)
	bests := make([]float64, (n+step-1)/step)
	parallel(len(bests), func(k int) error {
		for i := range n {
			bests[k] = max(bests[k], sim(k*step, i))
		}
		return nil
	})
	var probe float64
	for _, b := range bests {
		probe += b
	}
	if probe/float64(len(bests)) < probeLikeness {
		return nil, true
	}
	S := make([]float32, n*n)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := w; j < n; j += workers {
				for i := range n {
					S[j*n+i] = float32(sim(j, i))
				}
			}
		}()
	}
	wg.Wait()
	used := make([]bool, n)
	collide := false
	for j := range n {
		best := 0
		for i := range n {
			if S[j*n+i] > S[j*n+best] {
				best = i
			}
		}
		perm[j] = best
		if used[best] {
			collide = true
		}
		used[best] = true
	}
	if !collide {
		return perm, false
	}
	// greedy one-to-one: strongest pairs first
	type pair struct {
		j, i int
		s    float32
	}
	pairs := make([]pair, 0, n*n)
	for j := range n {
		for i := range n {
			pairs = append(pairs, pair{j, i, S[j*n+i]})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		if a.s > b.s {
			return -1
		}
		if a.s < b.s {
			return 1
		}
		return 0
	})
	clear(used)
	done := make([]bool, n)
	for _, p := range pairs {
		if !done[p.j] && !used[p.i] {
			perm[p.j], done[p.j], used[p.i] = p.i, true, true
		}
	}
	return perm, false
}
