package refmodel

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

func TestSynthesizeAndLoad(t *testing.T) {
	dir := t.TempDir()
	o := DefaultSynth()
	if err := Synthesize(dir, o); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := LoadModel(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if m.Vocab() != o.Vocab {
		t.Fatalf("vocab %d", m.Vocab())
	}
	// Deterministic at temperature 0; logit_bias moves the choice.
	a := m.Generate([]byte("hi"), 5, 0, 1, 3, nil)
	b2 := m.Generate([]byte("hi"), 5, 0, 1, 3, nil)
	if len(a) != 5 || a[0].Token != b2[0].Token || len(a[0].Top) != 3 {
		t.Fatalf("generate: %+v", a)
	}
	forced := m.Generate([]byte("hi"), 1, 0, 1, 1, map[int]float64{42: 100})
	if forced[0].Token != 42 {
		t.Fatalf("logit_bias ignored: %+v", forced)
	}
	// Same seed, same synthesized weights.
	dir2 := t.TempDir()
	Synthesize(dir2, o)
	c, _ := os.ReadFile(filepath.Join(dir2, "model.safetensors"))
	if !bytes.Equal(b, c) {
		t.Fatal("synthesis is not deterministic")
	}
}

func TestSafetensorsRejects(t *testing.T) {
	hdr := func(json string, data int) []byte {
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, uint64(len(json)))
		b.WriteString(json)
		b.Write(make([]byte, data))
		return b.Bytes()
	}
	for name, b := range map[string][]byte{
		"short":          {1, 2},
		"huge header":    hdr("", 0)[:8],
		"not json":       hdr("{nope", 0),
		"bad dtype":      hdr(`{"t":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}`, 4),
		"past end":       hdr(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4),
		"shape mismatch": hdr(`{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8),
		"negative shape": hdr(`{"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`, 0),
	} {
		if _, err := OpenSafetensors(bytes.NewReader(b), int64(len(b))); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func FuzzSafetensors(f *testing.F) {
	dir := f.TempDir()
	Synthesize(dir, SynthOptions{Name: "f", Layers: 1, Hidden: 4, Vocab: 8, Seed: 1})
	b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := OpenSafetensors(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for name := range st.Tensors {
			st.F32(name)
		}
		LoadModel(bytes.NewReader(b), int64(len(b)))
	})
}
