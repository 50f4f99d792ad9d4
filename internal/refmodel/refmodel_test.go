package refmodel

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/strongroom/strongroom/internal/watermark"
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
	a := m.Generate([]byte("hi"), 5, 0, 1, 3, nil, nil)
	b2 := m.Generate([]byte("hi"), 5, 0, 1, 3, nil, nil)
	if len(a) != 5 || a[0].Token != b2[0].Token || len(a[0].Top) != 3 {
		t.Fatalf("generate: %+v", a)
	}
	forced := m.Generate([]byte("hi"), 1, 0, 1, 1, map[int]float64{42: 100}, nil)
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

// TestWatermarkedGeneration: text sampled with a tenant's watermark hook is detected under
// that tenant's key after re-tokenizing the text, and not under another's.
func TestWatermarkedGeneration(t *testing.T) {
	dir := t.TempDir()
	Synthesize(dir, DefaultSynth())
	b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	m, _ := LoadModel(bytes.NewReader(b), int64(len(b)))
	secret := bytes.Repeat([]byte{5}, 32)
	acme, _ := watermark.DeriveKey(secret, "acme", watermark.DefaultParams())
	other, _ := watermark.DeriveKey(secret, "globex", watermark.DefaultParams())
	var text []byte
	for _, st := range m.Generate([]byte("once upon a time"), 300, 1.5, 7, 0, nil, acme.Bias) {
		text = append(text, TokenText(st.Token)...)
	}
	toks := Tokenize(string(text))
	if s := acme.Detect(toks); !s.Verdict(1e-3) {
		t.Fatalf("watermark not found: %+v", s)
	}
	if s := other.Detect(toks); s.Verdict(1e-3) {
		t.Fatalf("another tenant's key matched: %+v", s)
	}
	var plain []byte
	for _, st := range m.Generate([]byte("once upon a time"), 300, 1.5, 7, 0, nil, nil) {
		plain = append(plain, TokenText(st.Token)...)
	}
	if s := acme.Detect(Tokenize(string(plain))); s.Verdict(1e-3) {
		t.Fatalf("unwatermarked text flagged: %+v", s)
	}
	t.Logf("watermarked z=%.1f", acme.Detect(toks).Z)
}
