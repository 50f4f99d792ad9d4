// Package refmodel is the reference runtime for small models. This file synthesizes model
// directories (config, tokenizer, safetensors weights) so that tests, benchmarks and
// `strongroom dev` never need to download a model.
package refmodel

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// SynthOptions shape a synthetic model.
type SynthOptions struct {
	Name   string
	Layers int
	Hidden int
	Vocab  int
	Seed   uint64
	// MinBytes, when set, pads the weights with an extra tensor so that model.safetensors
	// is at least this large (for benchmarks of big files).
	MinBytes int64
}

// DefaultSynth is the small demo model `strongroom dev` serves.
func DefaultSynth() SynthOptions {
	return SynthOptions{Name: "strongroom-demo", Layers: 2, Hidden: 64, Vocab: 256, Seed: 1}
}

type tensor struct {
	name  string
	shape []int64
}

func (t tensor) elems() int64 {
	n := int64(1)
	for _, d := range t.shape {
		n *= d
	}
	return n
}

// Synthesize writes config.json, tokenizer.json and model.safetensors (F32, random normal
// weights from Seed) into dir, creating it. Memory use is constant whatever the size.
func Synthesize(dir string, o SynthOptions) error {
	if o.Layers <= 0 || o.Hidden <= 0 || o.Vocab <= 0 {
		return errors.New("refmodel: layers, hidden and vocab must be positive")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	h, v := int64(o.Hidden), int64(o.Vocab)
	ts := []tensor{{"embed.weight", []int64{v, h}}, {"lm_head.weight", []int64{v, h}}}
	for l := range o.Layers {
		p := fmt.Sprintf("layers.%d.", l)
		ts = append(ts, tensor{p + "attn.qkv.weight", []int64{3 * h, h}}, tensor{p + "attn.out.weight", []int64{h, h}},
			tensor{p + "mlp.up.weight", []int64{4 * h, h}}, tensor{p + "mlp.down.weight", []int64{h, 4 * h}})
	}
	var total int64
	for _, t := range ts {
		total += t.elems() * 4
	}
	if o.MinBytes > total {
		ts = append(ts, tensor{"padding.weight", []int64{(o.MinBytes - total + 3) / 4}})
	}
	cfg := map[string]any{"model_type": "strongroom-ref", "name": o.Name, "num_layers": o.Layers, "hidden_size": o.Hidden, "vocab_size": o.Vocab}
	if err := writeJSON(filepath.Join(dir, "config.json"), cfg); err != nil {
		return err
	}
	vocab := map[string]int{}
	for i := range o.Vocab {
		vocab[fmt.Sprintf("<%02x>", i)] = i
	}
	if err := writeJSON(filepath.Join(dir, "tokenizer.json"), map[string]any{"model": map[string]any{"type": "bytelevel", "vocab": vocab}}); err != nil {
		return err
	}
	return writeSafetensors(filepath.Join(dir, "model.safetensors"), ts, o.Seed)
}

func writeJSON(path string, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // special tokens like <|eot_id|> as written, not \u003c…
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// writeSafetensors writes the reference bigram model's tensors (F32).
func writeSafetensors(path string, ts []tensor, seed uint64) error {
	seedBytes := [32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}
	rng := rand.New(rand.NewChaCha8(seedBytes))
	raw := rand.NewChaCha8(seedBytes)
	block := make([]byte, 1<<20)
	var buf [4]byte
	return writeSafetensorsWith(path, ts, "F32", 4, func(t tensor, w *bufio.Writer) {
		if t.name == "padding.weight" {
			// Bulk filler for big benchmark files: random bytes, fast to generate.
			for left := t.elems() * 4; left > 0; left -= int64(len(block)) {
				n := min(left, int64(len(block)))
				raw.Read(block[:n])
				w.Write(block[:n])
			}
			return
		}
		scale := 1 / math.Sqrt(float64(t.shape[len(t.shape)-1]))
		for range t.elems() {
			binary.LittleEndian.PutUint32(buf[:], math.Float32bits(float32(rng.NormFloat64()*scale)))
			w.Write(buf[:])
		}
	})
}

// writeSafetensorsWith writes the safetensors layout — u64 little-endian header length, a
// JSON header of dtype, shape and data offsets per tensor (sorted by name), then the raw
// tensor bytes, which fill writes for each tensor in that order.
func writeSafetensorsWith(path string, ts []tensor, dtype string, width int64, fill func(t tensor, w *bufio.Writer)) error {
	slices.SortFunc(ts, func(a, b tensor) int { return strings.Compare(a.name, b.name) })
	hdr := map[string]any{"__metadata__": map[string]string{"format": "pt", "generator": "strongroom refmodel"}}
	var off int64
	for _, t := range ts {
		n := t.elems() * width
		hdr[t.name] = map[string]any{"dtype": dtype, "shape": t.shape, "data_offsets": []int64{off, off + n}}
		off += n
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	binary.Write(w, binary.LittleEndian, uint64(len(hb)))
	w.Write(hb)
	for _, t := range ts {
		fill(t, w)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
