package fingerprint

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
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

var dtypeWidth = map[string]int64{"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8}

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
		width, ok := dtypeWidth[ti.DType]
		if !ok {
			return nil, fmt.Errorf("safetensors: tensor %q: dtype %q", name, ti.DType)
		}
		if len(ti.Shape) > 8 {
			return nil, fmt.Errorf("safetensors: tensor %q: %d dimensions", name, len(ti.Shape))
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

// Names lists the tensors in file order.
func (s *Safetensors) Names() []string {
	names := make([]string, 0, len(s.Tensors))
	for n := range s.Tensors {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int {
		if c := s.Tensors[a].DataOffsets[0] - s.Tensors[b].DataOffsets[0]; c != 0 {
			return int(min(max(c, -1), 1))
		}
		return strings.Compare(a, b)
	})
	return names
}

// F32 reads a float32 tensor.
func (s *Safetensors) F32(name string) ([]float32, []int64, error) {
	if ti, ok := s.Tensors[name]; ok && ti.DType != "F32" {
		return nil, nil, fmt.Errorf("safetensors: tensor %q is %s, want F32", name, ti.DType)
	}
	return s.Floats(name)
}

// Floats reads a tensor as float32 from F32, BF16, F16 or I8 storage (I8 as its integer
// values: a scale, if any, lives in another tensor).
func (s *Safetensors) Floats(name string) ([]float32, []int64, error) {
	if ti, ok := s.Tensors[name]; ok && !slices.Contains([]string{"F32", "F16", "BF16", "I8"}, ti.DType) {
		return nil, nil, fmt.Errorf("safetensors: tensor %q is %s, want F32, BF16, F16 or I8", name, ti.DType)
	}
	ti, ok := s.Tensors[name]
	if !ok {
		return nil, nil, fmt.Errorf("safetensors: no tensor %q", name)
	}
	// decoded in 1 MiB chunks through one buffer: half the memory traffic of reading the
	// whole tensor first
	width := dtypeWidth[ti.DType]
	out := make([]float32, (ti.DataOffsets[1]-ti.DataOffsets[0])/width)
	buf := make([]byte, min(1<<20, len(out)*int(width)))
	defer clear(buf)
	for done := 0; done < len(out); {
		n := min(len(buf)/int(width), len(out)-done)
		b := buf[:n*int(width)]
		if _, err := s.r.ReadAt(b, s.base+ti.DataOffsets[0]+int64(done)*width); err != nil {
			return nil, nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		decode(ti.DType, b, out[done:done+n])
		done += n
	}
	return out, ti.Shape, nil
}

func decode(dtype string, b []byte, out []float32) {
	switch dtype {
	case "F32":
		b = b[:4*len(out)]
		for i := range out {
			out[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
		}
	case "BF16":
		b = b[:2*len(out)]
		i := 0
		for ; i+4 <= len(out); i += 4 { // four at a time: one 8-byte load
			x := binary.LittleEndian.Uint64(b[2*i:])
			o := out[i : i+4 : i+4]
			o[0] = math.Float32frombits(uint32(x) << 16)
			o[1] = math.Float32frombits(uint32(x) &^ 0xffff)
			o[2] = math.Float32frombits(uint32(x>>32) << 16)
			o[3] = math.Float32frombits(uint32(x>>32) &^ 0xffff)
		}
		for ; i < len(out); i++ {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
	case "F16":
		for i := range out {
			out[i] = F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case "I8":
		for i := range out {
			out[i] = float32(int8(b[i]))
		}
	}
}

// WriteSafetensors writes ts in dtype (F32, F16 or BF16), sorted by name, with the
// metadata given.
func WriteSafetensors(w io.Writer, ts []Tensor, dtype string, meta map[string]string) error {
	width, ok := dtypeWidth[dtype]
	if !ok || (dtype != "F32" && dtype != "F16" && dtype != "BF16") {
		return fmt.Errorf("safetensors: cannot write dtype %q", dtype)
	}
	ts = slices.Clone(ts)
	slices.SortFunc(ts, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
	hdr := map[string]any{}
	if len(meta) > 0 {
		hdr["__metadata__"] = meta
	}
	var off int64
	for _, t := range ts {
		n := int64(len(t.Data)) * width
		hdr[t.Name] = TensorInfo{DType: dtype, Shape: t.Shape, DataOffsets: [2]int64{off, off + n}}
		off += n
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	for len(hb)%8 != 0 {
		hb = append(hb, ' ')
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	binary.Write(bw, binary.LittleEndian, uint64(len(hb)))
	bw.Write(hb)
	var b [4]byte
	for _, t := range ts {
		for _, x := range t.Data {
			switch dtype {
			case "F32":
				binary.LittleEndian.PutUint32(b[:], math.Float32bits(x))
			case "F16":
				binary.LittleEndian.PutUint16(b[:], F32ToF16(x))
			case "BF16":
				binary.LittleEndian.PutUint16(b[:], F32ToBF16(x))
			}
			bw.Write(b[:width])
		}
	}
	return bw.Flush()
}
