package fingerprint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// GGUF v3 (SPEC: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): "GGUF",
// u32 version, u64 tensor count, u64 metadata count, metadata (string key, u32 type, value),
// tensor infos (string name, u32 n_dims, u64 dims[n_dims] fastest first, u32 type, u64
// offset from the data section), padding to general.alignment (default 32), data.
// Strings are u64 length + bytes. Everything little-endian.

// Limits on GGUF input; every count is also checked against the bytes left in the file
// before anything is allocated for it.
const (
	maxGGUFTensors = 1 << 16
	maxGGUFKVs     = 1 << 16
	maxGGUFString  = 1 << 20
	maxGGUFDims    = 4
	maxGGUFElems   = 1 << 34
)

// GGUFTensor is one tensor info.
type GGUFTensor struct {
	Name   string
	Dims   []int64 // GGUF order: fastest-varying first
	Type   GGMLType
	Offset int64 // from the start of the data section
	Size   int64 // bytes
}

// Shape is the row-major shape (slowest first), as safetensors and PyTorch write it.
func (t GGUFTensor) Shape() []int64 {
	s := make([]int64, len(t.Dims))
	for i, d := range t.Dims {
		s[len(s)-1-i] = d
	}
	return s
}

// GGUF is a parsed GGUF file over an io.ReaderAt.
type GGUF struct {
	r       io.ReaderAt
	data    int64
	Version uint32
	Meta    map[string]any // scalar values (string, integers as int64 or uint64, float64, bool); arrays as their length (int64)
	Tensors []GGUFTensor
	byName  map[string]int
}

// ErrGGUF is a malformed GGUF file.
var ErrGGUF = errors.New("gguf")

type cursor struct {
	r    io.ReaderAt
	off  int64
	size int64
	buf  [8]byte
	err  error
}

func (c *cursor) fail(format string, a ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: "+format, append([]any{ErrGGUF}, a...)...)
	}
}

func (c *cursor) bytes(n int64) []byte {
	if c.err != nil {
		return nil
	}
	if n < 0 || n > c.size-c.off {
		c.fail("%d bytes at offset %d run past the end of the file (%d bytes)", n, c.off, c.size)
		return nil
	}
	var b []byte
	if n <= 8 {
		b = c.buf[:n]
	} else {
		b = make([]byte, n)
	}
	if _, err := c.r.ReadAt(b, c.off); err != nil {
		c.fail("read at %d: %v", c.off, err)
		return nil
	}
	c.off += n
	return b
}

func (c *cursor) u32() uint32 {
	b := c.bytes(4)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(b)
}

func (c *cursor) u64() uint64 {
	b := c.bytes(8)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(b)
}

func (c *cursor) str() string {
	n := c.u64()
	if c.err == nil && n > maxGGUFString {
		c.fail("string of %d bytes at offset %d", n, c.off)
	}
	return string(c.bytes(int64(n)))
}

// scalar widths of metadata value types; 8 = string, 9 = array.
var ggufWidth = map[uint32]int64{0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

func (c *cursor) value(typ uint32, depth int) any {
	if w, ok := ggufWidth[typ]; ok {
		b := c.bytes(w)
		if b == nil {
			return nil
		}
		var u uint64
		for i := range w {
			u |= uint64(b[i]) << (8 * i)
		}
		switch typ {
		case 0, 2, 4, 10:
			return u
		case 1:
			return int64(int8(u))
		case 3:
			return int64(int16(u))
		case 5:
			return int64(int32(u))
		case 11:
			return int64(u)
		case 6:
			return float64(math.Float32frombits(uint32(u)))
		case 12:
			return math.Float64frombits(u)
		case 7:
			return u != 0
		}
	}
	switch typ {
	case 8:
		return c.str()
	case 9:
		et, n := c.u32(), c.u64()
		if depth > 2 {
			c.fail("arrays nested too deep")
			return nil
		}
		min := int64(8) // a string or nested array takes at least its 8-byte length
		if w, ok := ggufWidth[et]; ok {
			min = w
		} else if et != 8 && et != 9 {
			c.fail("array of value type %d", et)
			return nil
		}
		if c.err != nil || n > uint64((c.size-c.off)/min) {
			c.fail("array of %d elements at offset %d does not fit the file", n, c.off)
			return nil
		}
		if w, ok := ggufWidth[et]; ok {
			c.bytes(int64(n) * w)
		} else {
			for range n {
				if c.value(et, depth+1); c.err != nil {
					return nil
				}
			}
		}
		return int64(n)
	}
	c.fail("metadata value type %d", typ)
	return nil
}

// OpenGGUF parses and checks a GGUF v3 (or v2) file's header and tensor infos: counts,
// shapes, types and offsets must fit the file.
func OpenGGUF(r io.ReaderAt, size int64) (*GGUF, error) {
	c := &cursor{r: r, size: size}
	if magic := c.bytes(4); c.err != nil || string(magic) != "GGUF" {
		return nil, fmt.Errorf("%w: not a GGUF file", ErrGGUF)
	}
	g := &GGUF{r: r, Version: c.u32(), Meta: map[string]any{}, byName: map[string]int{}}
	if c.err == nil && g.Version != 3 && g.Version != 2 {
		return nil, fmt.Errorf("%w: version %d (want 2 or 3)", ErrGGUF, g.Version)
	}
	nt, nkv := c.u64(), c.u64()
	if c.err == nil && (nt > maxGGUFTensors || nkv > maxGGUFKVs) {
		return nil, fmt.Errorf("%w: %d tensors, %d metadata entries: too many", ErrGGUF, nt, nkv)
	}
	for range nkv {
		k := c.str()
		v := c.value(c.u32(), 0)
		if c.err != nil {
			return nil, c.err
		}
		if _, dup := g.Meta[k]; dup {
			return nil, fmt.Errorf("%w: metadata key %q twice", ErrGGUF, k)
		}
		g.Meta[k] = v
	}
	align := int64(32)
	if a, ok := g.Meta["general.alignment"]; ok {
		u, isU := a.(uint64)
		if !isU || u == 0 || u > 1<<16 || u&(u-1) != 0 {
			return nil, fmt.Errorf("%w: general.alignment %v", ErrGGUF, a)
		}
		align = int64(u)
	}
	for range nt {
		t := GGUFTensor{Name: c.str()}
		nd := c.u32()
		if c.err == nil && (nd == 0 || nd > maxGGUFDims) {
			return nil, fmt.Errorf("%w: tensor %q: %d dimensions", ErrGGUF, t.Name, nd)
		}
		elems := int64(1)
		for range nd {
			d := c.u64()
			if c.err == nil && (d == 0 || d > maxGGUFElems || uint64(elems) > maxGGUFElems/d) {
				return nil, fmt.Errorf("%w: tensor %q: absurd shape", ErrGGUF, t.Name)
			}
			elems *= int64(d)
			t.Dims = append(t.Dims, int64(d))
		}
		t.Type = GGMLType(c.u32())
		off := c.u64()
		if c.err != nil {
			return nil, c.err
		}
		ne, nb, ok := blockInfo(t.Type)
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q: storage type %s not read", ErrGGUF, t.Name, t.Type)
		}
		if t.Dims[0]%ne != 0 {
			return nil, fmt.Errorf("%w: tensor %q: row of %d is not whole %s blocks", ErrGGUF, t.Name, t.Dims[0], t.Type)
		}
		if off > uint64(size) || int64(off)%align != 0 {
			return nil, fmt.Errorf("%w: tensor %q: offset %d", ErrGGUF, t.Name, off)
		}
		t.Offset, t.Size = int64(off), elems/ne*nb
		if _, dup := g.byName[t.Name]; dup {
			return nil, fmt.Errorf("%w: tensor %q twice", ErrGGUF, t.Name)
		}
		g.byName[t.Name] = len(g.Tensors)
		g.Tensors = append(g.Tensors, t)
	}
	if c.err != nil {
		return nil, c.err
	}
	g.data = (c.off + align - 1) / align * align
	for _, t := range g.Tensors {
		if t.Offset > size-g.data || t.Size > size-g.data-t.Offset {
			return nil, fmt.Errorf("%w: tensor %q: %d bytes at %d run past the end of the file", ErrGGUF, t.Name, t.Size, g.data+t.Offset)
		}
	}
	return g, nil
}

// Floats reads a tensor dequantized to float32, with its row-major shape.
func (g *GGUF) Floats(name string) ([]float32, []int64, error) {
	i, ok := g.byName[name]
	if !ok {
		return nil, nil, fmt.Errorf("gguf: no tensor %q", name)
	}
	t := g.Tensors[i]
	buf := make([]byte, t.Size)
	if _, err := g.r.ReadAt(buf, g.data+t.Offset); err != nil {
		return nil, nil, fmt.Errorf("gguf: tensor %q: %w", name, err)
	}
	ne, nb, _ := blockInfo(t.Type)
	out := make([]float32, t.Size/nb*ne)
	dequantize(t.Type, buf, out)
	return out, t.Shape(), nil
}

// MetaInt is an integer metadata value, 0 when absent or not an integer.
func (g *GGUF) MetaInt(key string) int64 {
	switch v := g.Meta[key].(type) {
	case uint64:
		return int64(min(v, math.MaxInt32))
	case int64:
		return v
	}
	return 0
}
