package refmodel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
)

// Limits on safetensors input, which may come from anywhere.
const (
	maxHeader  = 16 << 20
	maxTensors = 1 << 16
)

// TensorInfo is one entry of a safetensors header.
type TensorInfo struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// Safetensors is a parsed safetensors file over an io.ReaderAt (a sealed file's reader,
// so the weights are decrypted chunk by chunk into memory, never to disk).
type Safetensors struct {
	r       io.ReaderAt
	base    int64
	Tensors map[string]TensorInfo
}

// OpenSafetensors parses and checks the header: sizes, dtypes, shapes and offsets must
// agree and stay inside the file.
func OpenSafetensors(r io.ReaderAt, size int64) (*Safetensors, error) {
	var lenb [8]byte
	if _, err := r.ReadAt(lenb[:], 0); err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	n := binary.LittleEndian.Uint64(lenb[:])
	if n == 0 || n > maxHeader || int64(n)+8 > size {
		return nil, fmt.Errorf("safetensors: header length %d out of range", n)
	}
	hb := make([]byte, n)
	if _, err := r.ReadAt(hb, 8); err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(hb, &raw); err != nil {
		return nil, fmt.Errorf("safetensors: header: %w", err)
	}
	if len(raw) > maxTensors {
		return nil, errors.New("safetensors: too many tensors")
	}
	st := &Safetensors{r: r, base: 8 + int64(n), Tensors: map[string]TensorInfo{}}
	dataLen := size - st.base
	for name, v := range raw {
		if name == "__metadata__" {
			continue
		}
		var ti TensorInfo
		if err := json.Unmarshal(v, &ti); err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		width, ok := map[string]int64{"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8}[ti.DType]
		if !ok {
			return nil, fmt.Errorf("safetensors: tensor %q: dtype %q", name, ti.DType)
		}
		elems := int64(1)
		for _, d := range ti.Shape {
			if d < 0 || (d > 0 && elems > math.MaxInt64/d/8) {
				return nil, fmt.Errorf("safetensors: tensor %q: bad shape", name)
			}
			elems *= d
		}
		b, e := ti.DataOffsets[0], ti.DataOffsets[1]
		if b < 0 || e < b || e > dataLen || e-b != elems*width {
			return nil, fmt.Errorf("safetensors: tensor %q: offsets %d..%d do not fit shape and file", name, b, e)
		}
		st.Tensors[name] = ti
	}
	return st, nil
}

// F32 reads a float32 tensor.
func (s *Safetensors) F32(name string) ([]float32, []int64, error) {
	ti, ok := s.Tensors[name]
	if !ok {
		return nil, nil, fmt.Errorf("safetensors: no tensor %q", name)
	}
	if ti.DType != "F32" {
		return nil, nil, fmt.Errorf("safetensors: tensor %q is %s, want F32", name, ti.DType)
	}
	buf := make([]byte, ti.DataOffsets[1]-ti.DataOffsets[0])
	if _, err := s.r.ReadAt(buf, s.base+ti.DataOffsets[0]); err != nil {
		return nil, nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
	}
	out := make([]float32, len(buf)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*i:]))
	}
	clear(buf)
	return out, ti.Shape, nil
}
