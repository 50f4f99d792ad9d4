package fingerprint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestSafetensorsRoundTrip(t *testing.T) {
	m := synthModel(1, 2, 64, 128, 96, 4, 2)
	for _, c := range []struct {
		dtype string
		tol   float64
	}{{"F32", 0}, {"F16", 1e-3}, {"BF16", 4e-3}} {
		got := read(t, toSafetensors(t, m, c.dtype))
		if len(got.Tensors) != len(m.Tensors) {
			t.Fatalf("%s: %d tensors, want %d", c.dtype, len(got.Tensors), len(m.Tensors))
		}
		for _, want := range m.Tensors {
			g := got.Get(want.Name)
			if g == nil {
				t.Fatalf("%s: %s missing", c.dtype, want.Name)
			}
			if e := relErr(want.Data, g.Data); e > c.tol {
				t.Errorf("%s %s: relative error %g > %g", c.dtype, want.Name, e, c.tol)
			}
		}
	}
}

func TestSafetensorsI8(t *testing.T) {
	hdr := `{"q":{"dtype":"I8","shape":[2,2],"data_offsets":[0,4]}}`
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(hdr)))
	b.WriteString(hdr)
	b.Write([]byte{1, 0xff, 0x80, 127})
	m := read(t, b.Bytes())
	want := []float32{1, -1, -128, 127}
	for i, x := range m.Get("q").Data {
		if x != want[i] {
			t.Fatalf("I8: got %v, want %v", m.Get("q").Data, want)
		}
	}
}

func TestGGUFTypes(t *testing.T) {
	m := synthModel(2, 1, 256, 512, 64, 4, 4)
	for _, c := range []struct {
		typ GGMLType
		tol float64
	}{{TypeF32, 0}, {TypeF16, 1e-3}, {TypeBF16, 4e-3}, {TypeQ8_0, 0.01}, {TypeQ6_K, 0.05}, {TypeQ4_K, 0.15}, {TypeQ4_0, 0.15}} {
		got := read(t, toGGUF(t, m, c.typ))
		if got.Format != "gguf" || got.Heads != 4 {
			t.Fatalf("%s: format %s heads %d", c.typ, got.Format, got.Heads)
		}
		for _, want := range m.Tensors {
			g := got.Get(want.Name)
			if g == nil {
				t.Fatalf("%s: %s missing (names not mapped back)", c.typ, want.Name)
			}
			if e := relErr(want.Data, g.Data); e > c.tol || (len(want.Shape) == 1 && e != 0) {
				t.Errorf("%s %s: relative error %g > %g", c.typ, want.Name, e, c.tol)
			}
		}
	}
}

// Golden blocks built by hand from ggml-quants.c's layouts, so that a packing mistake
// shared by the quantizer and the dequantizer here would still show.
func TestGGUFBlocksByHand(t *testing.T) {
	one := F32ToF16(1)
	// Q4_0: d=2, nibble j low = element j, high = element j+16; value (q-8)*d.
	q40 := make([]byte, 18)
	binary.LittleEndian.PutUint16(q40, F32ToF16(2))
	q40[2+3] = 0x9<<4 | 0xa // element 3: (10-8)*2=4; element 19: (9-8)*2=2
	y := make([]float32, 32)
	dequantize(TypeQ4_0, q40, y)
	if y[3] != 4 || y[19] != 2 || y[0] != -16 {
		t.Errorf("Q4_0: %v", y)
	}
	// Q4_K: sub-block 5 (elements 160..191) has scale 37 = 0b10_0101: low nibble in
	// scales[9], top two bits in scales[1]>>6; min 0. Elements 160..191 are the high
	// nibbles of qs[64..95] (the third 64-chunk's second half).
	q4k := make([]byte, 144)
	binary.LittleEndian.PutUint16(q4k, one)
	q4k[4+9] = 0x05
	q4k[4+1] = 0x2 << 6
	q4k[16+64+7] = 0x3 << 4
	y = make([]float32, 256)
	dequantize(TypeQ4_K, q4k, y)
	if y[167] != 37*3 || y[39] != 0 {
		t.Errorf("Q4_K: y[167]=%v y[39]=%v", y[167], y[39])
	}
	// Q6_K: element 200 = n 128 + l 8 + 64 → q3 of l=8 in the second half: ql[64+8]
	// high nibble, qh[32+8] bits 4-5; scale sc[8 + 0 + 4] (is = 8/16 = 0).
	q6k := make([]byte, 210)
	binary.LittleEndian.PutUint16(q6k[208:], one)
	q6k[192+12] = 3
	q6k[64+8] = 0x7 << 4
	q6k[128+32+8] = 0x2 << 4 // q = 0x27 = 39, minus 32 = 7
	y = make([]float32, 256)
	dequantize(TypeQ6_K, q6k, y)
	if y[200] != 21 {
		t.Errorf("Q6_K: y[200]=%v, want 21", y[200])
	}
}

func TestNames(t *testing.T) {
	for hf, gg := range map[string]string{
		"model.embed_tokens.weight":                      "token_embd.weight",
		"lm_head.weight":                                 "output.weight",
		"model.layers.12.self_attn.o_proj.weight":        "blk.12.attn_output.weight",
		"model.layers.0.mlp.down_proj.weight":            "blk.0.ffn_down.weight",
		"model.layers.3.post_attention_layernorm.weight": "blk.3.ffn_norm.weight",
	} {
		if g, ok := HFToGGUF(hf); !ok || g != gg {
			t.Errorf("HFToGGUF(%s) = %s", hf, g)
		}
		if h, ok := GGUFToHF(gg); !ok || h != hf {
			t.Errorf("GGUFToHF(%s) = %s", gg, h)
		}
	}
	w := make([]float32, 8*3)
	for i := range w {
		w[i] = float32(i / 3) // row index
	}
	p := PermuteRope(w, 8, 3, 2, false) // head dim 4: rows 0,2,1,3 | 4,6,5,7
	if p[3] != 2 || p[6] != 1 || p[15] != 6 {
		t.Errorf("PermuteRope: %v", p)
	}
	if back := PermuteRope(p, 8, 3, 2, true); relErr(w, back) != 0 {
		t.Errorf("PermuteRope inverse: %v", back)
	}
}

func TestHostileFiles(t *testing.T) {
	le := binary.LittleEndian
	gguf := func(f func(b *bytes.Buffer)) []byte {
		var b bytes.Buffer
		b.WriteString("GGUF")
		binary.Write(&b, le, uint32(3))
		f(&b)
		return b.Bytes()
	}
	str := func(b *bytes.Buffer, s string) { binary.Write(b, le, uint64(len(s))); b.WriteString(s) }
	valid := toGGUF(t, synthModel(3, 1, 32, 64, 16, 2, 2), TypeQ8_0)
	for name, b := range map[string][]byte{
		"huge tensor count": gguf(func(b *bytes.Buffer) { binary.Write(b, le, uint64(1<<40)); binary.Write(b, le, uint64(0)) }),
		"huge array": gguf(func(b *bytes.Buffer) {
			binary.Write(b, le, uint64(0))
			binary.Write(b, le, uint64(1))
			str(b, "k")
			binary.Write(b, le, uint32(9))
			binary.Write(b, le, uint32(8))
			binary.Write(b, le, uint64(1<<50))
		}),
		"huge string": gguf(func(b *bytes.Buffer) {
			binary.Write(b, le, uint64(0))
			binary.Write(b, le, uint64(1))
			binary.Write(b, le, uint64(1<<62))
		}),
		"offset past end": gguf(func(b *bytes.Buffer) {
			binary.Write(b, le, uint64(1))
			binary.Write(b, le, uint64(0))
			str(b, "t")
			binary.Write(b, le, uint32(2))
			binary.Write(b, le, uint64(32))
			binary.Write(b, le, uint64(1<<20))
			binary.Write(b, le, uint32(TypeF32))
			binary.Write(b, le, uint64(0))
		}),
		"absurd shape": gguf(func(b *bytes.Buffer) {
			binary.Write(b, le, uint64(1))
			binary.Write(b, le, uint64(0))
			str(b, "t")
			binary.Write(b, le, uint32(4))
			for range 4 {
				binary.Write(b, le, uint64(1<<40))
			}
		}),
		"truncated":          valid[:len(valid)-7],
		"truncated header":   valid[:100],
		"safetensors header": append(binary.LittleEndian.AppendUint64(nil, 1<<40), '{'),
		"empty":              {},
	} {
		_, err := Read(bytes.NewReader(b), int64(len(b)))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error has several lines: %q", name, err)
		}
		if strings.HasPrefix(name, "huge") || name == "offset past end" || name == "absurd shape" {
			if !errors.Is(err, ErrGGUF) {
				t.Errorf("%s: %v is not ErrGGUF", name, err)
			}
		}
	}
	if math.IsNaN(float64(F16ToF32(0x7e00))) == false {
		t.Error("F16 NaN")
	}
}

func FuzzReadGGUF(f *testing.F) {
	// small seeds: one tensor of each stored type, and a whole tiny model
	for _, typ := range []GGMLType{TypeF32, TypeF16, TypeBF16, TypeQ8_0, TypeQ4_0, TypeQ4_K, TypeQ6_K} {
		var b bytes.Buffer
		x := Tensor{Name: "blk.0.ffn_up.weight", Shape: []int64{1, 256}, Data: make([]float32, 256)}
		for i := range x.Data {
			x.Data[i] = float32(i%17) - 8
		}
		if err := WriteGGUF(&b, []KV{{"general.architecture", "llama"}, {"llama.attention.head_count", uint32(2)}}, []Tensor{x}, func(Tensor) GGMLType { return typ }); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes())
	}
	f.Add(toGGUF(f, synthModel(4, 1, 32, 32, 4, 2, 1), TypeQ4_0))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := Read(bytes.NewReader(b), int64(len(b))); err == nil && m.Format != "gguf" && m.Format != "safetensors" {
			t.Fatal(m.Format)
		}
	})
}

func FuzzReadSafetensors(f *testing.F) {
	f.Add(toSafetensors(f, synthModel(7, 1, 8, 8, 4, 2, 2), "BF16"))
	f.Add(toSafetensors(f, synthModel(8, 1, 4, 4, 4, 2, 2), "F32"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if st, err := OpenSafetensors(bytes.NewReader(b), int64(len(b))); err == nil {
			for _, n := range st.Names() {
				st.Floats(n)
			}
		}
	})
}

// TestDecodeBF16Exact: the four-at-a-time BF16 decoder widens every value exactly as
// BF16ToF32 does, for every length around its step of four.
func TestDecodeBF16Exact(t *testing.T) {
	for n := range 11 {
		b := make([]byte, 2*n)
		for i := range b {
			b[i] = byte(37*i + 11)
		}
		out := make([]float32, n)
		decode("BF16", b, out)
		for i := range n {
			if want := BF16ToF32(uint16(b[2*i]) | uint16(b[2*i+1])<<8); math.Float32bits(out[i]) != math.Float32bits(want) {
				t.Fatalf("n=%d: element %d is %#x, want %#x", n, i, math.Float32bits(out[i]), math.Float32bits(want))
			}
		}
	}
}
