package fingerprint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Tensor is one weight tensor as float32, row-major.
type Tensor struct {
	Name  string  // Hugging Face name when the file's names map to it
	Shape []int64 // slowest first
	Data  []float32
}

// Rows and Cols view a tensor as a matrix: the first dimension by the rest.
func (t *Tensor) Rows() int { return int(t.Shape[0]) }

// Cols is the product of every dimension but the first.
func (t *Tensor) Cols() int {
	if len(t.Shape) == 0 || t.Shape[0] == 0 {
		return 0
	}
	return len(t.Data) / int(t.Shape[0])
}

// Model is a set of tensors read from one file or a Hugging Face model directory.
type Model struct {
	Path           string
	Format         string // "safetensors", "gguf" or "hf-dir"
	Heads, KVHeads int    // from config.json or the GGUF metadata; 0 when unknown
	Tensors        []Tensor
}

// Get finds a tensor by name.
func (m *Model) Get(name string) *Tensor {
	for i := range m.Tensors {
		if m.Tensors[i].Name == name {
			return &m.Tensors[i]
		}
	}
	return nil
}

// Params is the number of weights.
func (m *Model) Params() int64 {
	var n int64
	for _, t := range m.Tensors {
		n += int64(len(t.Data))
	}
	return n
}

// MaxModelBytes caps what Load decodes (float32 in memory), so that a hostile header
// cannot make the scanner allocate without bound.
const MaxModelBytes = 64 << 30

// ErrFormat is a file that is neither safetensors nor GGUF.
var ErrFormat = errors.New("not a safetensors or GGUF file")

// Load reads a safetensors file, a GGUF file or a Hugging Face model directory (every
// *.safetensors in it, config.json for the head counts). GGUF names are mapped to Hugging
// Face names and llama.cpp's rotary row order undone, so that copies compare tensor by
// tensor. Errors name the file.
func Load(path string) (*Model, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return loadFile(path)
	}
	files, _ := filepath.Glob(filepath.Join(path, "*.safetensors"))
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no *.safetensors in the directory", path)
	}
	slices.Sort(files)
	m := &Model{Path: path, Format: "hf-dir"}
	if b, err := os.ReadFile(filepath.Join(path, "config.json")); err == nil {
		m.Heads, m.KVHeads = HeadsFromConfig(b)
	}
	var total int64
	for _, f := range files {
		sub, err := loadFile(f)
		if err != nil {
			return nil, err
		}
		total += 4 * sub.Params()
		if total > MaxModelBytes {
			return nil, fmt.Errorf("%s: more than %d bytes of weights", path, int64(MaxModelBytes))
		}
		m.Tensors = append(m.Tensors, sub.Tensors...)
	}
	return m, nil
}

func loadFile(path string) (*Model, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	m, err := Read(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	m.Path = path
	return m, nil
}

// Read reads a safetensors or GGUF stream (told apart by the GGUF magic).
func Read(r io.ReaderAt, size int64) (*Model, error) {
	var magic [4]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil {
		return nil, ErrFormat
	}
	if string(magic[:]) == "GGUF" {
		return readGGUF(r, size)
	}
	return readSafetensors(r, size)
}

func readSafetensors(r io.ReaderAt, size int64) (*Model, error) {
	st, err := OpenSafetensors(r, size)
	if err != nil {
		return nil, err
	}
	m := &Model{Format: "safetensors"}
	var total int64
	var names []string
	for _, name := range st.Names() {
		ti := st.Tensors[name]
		if !slices.Contains([]string{"F32", "F16", "BF16", "I8"}, ti.DType) {
			continue // integer buffers and the like carry no weights to compare
		}
		total += (ti.DataOffsets[1] - ti.DataOffsets[0]) / dtypeWidth[ti.DType] * 4
		if total > MaxModelBytes {
			return nil, fmt.Errorf("more than %d bytes of weights", int64(MaxModelBytes))
		}
		names = append(names, name)
	}
	m.Tensors = make([]Tensor, len(names))
	err = parallel(len(names), func(i int) error {
		data, shape, err := st.Floats(names[i])
		m.Tensors[i] = Tensor{Name: names[i], Shape: shape, Data: data}
		return err
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// parallel runs fn(0..n-1) on GOMAXPROCS goroutines and returns the first error.
func parallel(n int, fn func(i int) error) error {
	var next atomic.Int64
	errs := make([]error, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || errs[w] != nil {
					return
				}
				errs[w] = fn(i)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func readGGUF(r io.ReaderAt, size int64) (*Model, error) {
	g, err := OpenGGUF(r, size)
	if err != nil {
		return nil, err
	}
	m := &Model{Format: "gguf"}
	if arch, ok := g.Meta["general.architecture"].(string); ok && len(arch) < 64 {
		m.Heads = int(g.MetaInt(arch + ".attention.head_count"))
		m.KVHeads = int(g.MetaInt(arch + ".attention.head_count_kv"))
		if m.KVHeads == 0 {
			m.KVHeads = m.Heads
		}
	}
	var total int64
	for _, t := range g.Tensors {
		ne, nb, _ := blockInfo(t.Type)
		total += t.Size / nb * ne * 4
		if total > MaxModelBytes {
			return nil, fmt.Errorf("more than %d bytes of weights", int64(MaxModelBytes))
		}
	}
	m.Tensors = make([]Tensor, len(g.Tensors))
	err = parallel(len(g.Tensors), func(i int) error {
		t := g.Tensors[i]
		data, shape, err := g.Floats(t.Name)
		if err != nil {
			return err
		}
		name := t.Name
		if hf, ok := GGUFToHF(name); ok {
			name = hf
			if h := ropePermuted(hf, m.Heads, m.KVHeads); h > 0 && len(shape) == 2 {
				data = PermuteRope(data, int(shape[0]), int(shape[1]), h, true)
			}
		}
		m.Tensors[i] = Tensor{Name: name, Shape: shape, Data: data}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// WriteModelGGUF writes m as llama.cpp's converter would: GGUF names, rotary rows
// permuted, matrices stored as typ and vectors as F32.
func WriteModelGGUF(w io.Writer, m *Model, typ GGMLType) error {
	meta := []KV{{"general.architecture", "llama"}, {"general.name", "strongroom-export"},
		{"general.alignment", uint32(32)},
		{"llama.attention.head_count", uint32(m.Heads)}, {"llama.attention.head_count_kv", uint32(m.KVHeads)},
		{"llama.block_count", uint32(countLayers(m))}}
	ts := make([]Tensor, 0, len(m.Tensors))
	for _, t := range m.Tensors {
		if g, ok := HFToGGUF(t.Name); ok {
			if h := ropePermuted(t.Name, m.Heads, m.KVHeads); h > 0 && len(t.Shape) == 2 {
				t.Data = PermuteRope(t.Data, t.Rows(), t.Cols(), h, false)
			}
			t.Name = g
		}
		ts = append(ts, t)
	}
	return WriteGGUF(w, meta, ts, func(t Tensor) GGMLType {
		if len(t.Shape) < 2 {
			return TypeF32
		}
		return typ
	})
}

func countLayers(m *Model) int {
	n := 0
	for _, t := range m.Tensors {
		if rest, ok := strings.CutPrefix(t.Name, "model.layers."); ok {
			var l int
			if _, err := fmt.Sscanf(rest, "%d.", &l); err == nil {
				n = max(n, l+1)
			}
		}
	}
	return n
}

// HeadsFromConfig reads the attention head counts of a Hugging Face config.json (0 when
// absent).
func HeadsFromConfig(b []byte) (heads, kvHeads int) {
	var cfg struct {
		Heads   int `json:"num_attention_heads"`
		KVHeads int `json:"num_key_value_heads"`
	}
	if json.Unmarshal(b, &cfg) != nil {
		return 0, 0
	}
	if cfg.KVHeads == 0 {
		cfg.KVHeads = cfg.Heads
	}
	return cfg.Heads, cfg.KVHeads
}

// Digest is the SHA-256 of a file, or for a directory of the manifest of its regular files
// ("SHA256  PATH\n" per file, sorted, as sha256sum prints them).
func Digest(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return fileDigest(path)
	}
	files := map[string]string{}
	err = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		h, err := fileDigest(p)
		rel, _ := filepath.Rel(path, p)
		files[filepath.ToSlash(rel)] = h
		return err
	})
	if err != nil {
		return "", err
	}
	return ManifestDigest(files), nil
}

// ManifestDigest is the SHA-256 of "SHA256  PATH\n" per file (path → hex digest), sorted
// by path: sha256sum's output, so `sha256sum -c` checks a copy file by file.
func ManifestDigest(files map[string]string) string {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	h := sha256.New()
	for _, p := range paths {
		fmt.Fprintf(h, "%s  %s\n", files[p], p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
