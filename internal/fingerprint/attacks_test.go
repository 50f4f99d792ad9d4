package fingerprint

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// What a leaker does to a copy (tests and the evaluation share these).

func attackQuant(t testing.TB, m *Model, typ GGMLType) *Model {
	return read(t, toGGUF(t, m, typ))
}

// attackNoise adds Gaussian noise of rel × each matrix's norm (simulated fine-tuning).
func attackNoise(m *Model, rel float64, seed uint64) *Model {
	c := cloneModel(m)
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range c.Tensors {
		t := &c.Tensors[i]
		if len(t.Shape) < 2 {
			continue
		}
		s := rel * RMS(t.Data)
		for k := range t.Data {
			t.Data[k] += float32(rng.NormFloat64() * s)
		}
	}
	return c
}

// attackLowRank adds a rank-r update of rel × each matrix's norm (LoRA merged in).
func attackLowRank(m *Model, rel float64, rank int, seed uint64) *Model {
	c := cloneModel(m)
	rng := rand.New(rand.NewPCG(seed, 2))
	for i := range c.Tensors {
		t := &c.Tensors[i]
		if len(t.Shape) < 2 {
			continue
		}
		R, C := t.Rows(), t.Cols()
		a, b := make([]float64, R*rank), make([]float64, rank*C)
		for k := range a {
			a[k] = rng.NormFloat64()
		}
		for k := range b {
			b[k] = rng.NormFloat64()
		}
		u := make([]float64, R*C)
		var un float64
		for r := range R {
			for k := range rank {
				x := a[r*rank+k]
				for cc := range C {
					u[r*C+cc] += x * b[k*C+cc]
				}
			}
		}
		for _, x := range u {
			un += x * x
		}
		s := rel * RMS(t.Data) * math.Sqrt(float64(len(u))/un)
		for k := range t.Data {
			t.Data[k] += float32(u[k] * s)
		}
	}
	return c
}

// attackPrune zeroes the smallest frac of each matrix's weights by magnitude.
func attackPrune(m *Model, frac float64) *Model {
	c := cloneModel(m)
	for i := range c.Tensors {
		t := &c.Tensors[i]
		if len(t.Shape) < 2 {
			continue
		}
		abs := make([]float32, len(t.Data))
		for k, x := range t.Data {
			abs[k] = abs32(x)
		}
		slices.Sort(abs)
		cut := abs[int(frac*float64(len(abs)))]
		for k, x := range t.Data {
			if abs32(x) < cut {
				t.Data[k] = 0
			}
		}
	}
	return c
}

// attackPartial keeps layer 0's tensors only.
func attackPartial(m *Model) *Model {
	c := &Model{Heads: m.Heads, KVHeads: m.KVHeads}
	for _, t := range cloneModel(m).Tensors {
		if bytes.HasPrefix([]byte(t.Name), []byte("model.layers.0.")) {
			c.Tensors = append(c.Tensors, t)
		}
	}
	return c
}

// attackRename gives every tensor a meaningless name.
func attackRename(m *Model) *Model {
	c := cloneModel(m)
	for i := range c.Tensors {
		c.Tensors[i].Name = fmt.Sprintf("w%03d", i)
	}
	return c
}

// attackPermute permutes and sign-flips the residual stream and every layer's MLP units
// and attention rows (function-preserving for the residual stream and the MLP).
func attackPermute(m *Model, seed uint64) *Model {
	c := cloneModel(m)
	rng := rand.New(rand.NewPCG(seed, 3))
	randPerm := func(n int) ([]int, []float32) {
		p := rng.Perm(n)
		s := make([]float32, n)
		for i := range s {
			s[i] = float32(1 - 2*rng.IntN(2))
		}
		return p, s
	}
	d := c.Get("model.embed_tokens.weight").Cols()
	pd, sd := randPerm(d)
	for i := range c.Tensors {
		t := &c.Tensors[i]
		cols, rows, vec := residualSide(t.Name)
		switch {
		case vec:
			t.Data = applyUnits(t.Data, 1, d, pd, nil, true)
		case cols:
			t.Data = applyUnits(t.Data, t.Rows(), d, pd, sd, true)
		case rows:
			t.Data = applyUnits(t.Data, d, t.Cols(), pd, sd, false)
		}
	}
	for l := 0; c.Get(fmt.Sprintf("model.layers.%d.mlp.up_proj.weight", l)) != nil; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		up, gate, down := c.Get(p+"mlp.up_proj.weight"), c.Get(p+"mlp.gate_proj.weight"), c.Get(p+"mlp.down_proj.weight")
		pf, sf := randPerm(up.Rows())
		up.Data = applyUnits(up.Data, up.Rows(), up.Cols(), pf, sf, false)
		gate.Data = applyUnits(gate.Data, gate.Rows(), gate.Cols(), pf, nil, false)
		down.Data = applyUnits(down.Data, down.Rows(), down.Cols(), pf, sf, true)
		v, o := c.Get(p+"self_attn.v_proj.weight"), c.Get(p+"self_attn.o_proj.weight")
		pv, sv := randPerm(v.Rows())
		v.Data = applyUnits(v.Data, v.Rows(), v.Cols(), pv, sv, false)
		po, so := randPerm(o.Cols())
		o.Data = applyUnits(o.Data, o.Rows(), o.Cols(), po, so, true)
	}
	return c
}

// attackAverage is the element-wise mean of two copies (collusion, or a 50/50 merge).
func attackAverage(a, b *Model) *Model {
	c := cloneModel(a)
	for i := range c.Tensors {
		o := b.Get(c.Tensors[i].Name)
		for k := range c.Tensors[i].Data {
			c.Tensors[i].Data[k] = (c.Tensors[i].Data[k] + o.Data[k]) / 2
		}
	}
	return c
}
