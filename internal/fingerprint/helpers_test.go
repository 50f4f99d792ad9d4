package fingerprint

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// synthModel is a small Llama-shaped model with normal weights (1/sqrt(fan-in)).
func synthModel(seed uint64, layers, d, ff, vocab, heads, kvHeads int) *Model {
	rng := rand.New(rand.NewPCG(seed, 17))
	kv := d / heads * kvHeads
	m := &Model{Format: "safetensors", Heads: heads, KVHeads: kvHeads}
	add := func(name string, shape ...int64) {
		n := int64(1)
		for _, s := range shape {
			n *= s
		}
		t := Tensor{Name: name, Shape: shape, Data: make([]float32, n)}
		scale := 1 / math.Sqrt(float64(shape[len(shape)-1]))
		for i := range t.Data {
			if len(shape) == 1 {
				t.Data[i] = float32(1 + 0.1*rng.NormFloat64())
			} else {
				t.Data[i] = float32(rng.NormFloat64() * scale)
			}
		}
		m.Tensors = append(m.Tensors, t)
	}
	D, F, V, KV := int64(d), int64(ff), int64(vocab), int64(kv)
	add("model.embed_tokens.weight", V, D)
	for l := range layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		add(p+"input_layernorm.weight", D)
		add(p+"self_attn.q_proj.weight", D, D)
		add(p+"self_attn.k_proj.weight", KV, D)
		add(p+"self_attn.v_proj.weight", KV, D)
		add(p+"self_attn.o_proj.weight", D, D)
		add(p+"post_attention_layernorm.weight", D)
		add(p+"mlp.gate_proj.weight", F, D)
		add(p+"mlp.up_proj.weight", F, D)
		add(p+"mlp.down_proj.weight", D, F)
	}
	add("model.norm.weight", D)
	add("lm_head.weight", V, D)
	return m
}

func cloneModel(m *Model) *Model {
	c := *m
	c.Tensors = make([]Tensor, len(m.Tensors))
	for i, t := range m.Tensors {
		c.Tensors[i] = Tensor{Name: t.Name, Shape: append([]int64(nil), t.Shape...), Data: append([]float32(nil), t.Data...)}
	}
	return &c
}

func toGGUF(t testing.TB, m *Model, typ GGMLType) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteModelGGUF(&buf, m, typ); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func toSafetensors(t testing.TB, m *Model, dtype string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, m.Tensors, dtype, nil); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func read(t testing.TB, b []byte) *Model {
	t.Helper()
	m, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// relErr is ‖a−b‖/‖a‖.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		e := float64(a[i] - b[i])
		num += e * e
		den += float64(a[i]) * float64(a[i])
	}
	return math.Sqrt(num / den)
}
