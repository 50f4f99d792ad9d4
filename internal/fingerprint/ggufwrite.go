package fingerprint

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
)

// KV is one GGUF metadata entry; Value is a string, uint32, int32, uint64, float32 or
// bool.
type KV struct {
	Key   string
	Value any
}

// WriteGGUF writes a GGUF v3 file of ts (row-major shapes), in metadata order, with each
// tensor stored as typ(tensor): a type whose block does not divide the row falls back to
// F32 (as llama.cpp's quantizer keeps such tensors unquantized).
func WriteGGUF(w io.Writer, meta []KV, ts []Tensor, typ func(Tensor) GGMLType) error {
	bw := &countWriter{Writer: bufio.NewWriterSize(w, 1<<20)}
	le := binary.LittleEndian
	str := func(s string) { binary.Write(bw, le, uint64(len(s))); bw.WriteString(s) }
	bw.WriteString("GGUF")
	binary.Write(bw, le, uint32(3))
	binary.Write(bw, le, uint64(len(ts)))
	binary.Write(bw, le, uint64(len(meta)))
	for _, kv := range meta {
		str(kv.Key)
		switch v := kv.Value.(type) {
		case string:
			binary.Write(bw, le, uint32(8))
			str(v)
		case uint32:
			binary.Write(bw, le, uint32(4))
			binary.Write(bw, le, v)
		case int32:
			binary.Write(bw, le, uint32(5))
			binary.Write(bw, le, v)
		case float32:
			binary.Write(bw, le, uint32(6))
			binary.Write(bw, le, v)
		case bool:
			binary.Write(bw, le, uint32(7))
			binary.Write(bw, le, v)
		case uint64:
			binary.Write(bw, le, uint32(10))
			binary.Write(bw, le, v)
		default:
			return fmt.Errorf("gguf: metadata %q: value type %T", kv.Key, kv.Value)
		}
	}
	types := make([]GGMLType, len(ts))
	var off int64
	for i, t := range ts {
		if len(t.Shape) == 0 || len(t.Shape) > maxGGUFDims {
			return fmt.Errorf("gguf: tensor %q: %d dimensions", t.Name, len(t.Shape))
		}
		types[i] = typ(t)
		ne, nb, ok := blockInfo(types[i])
		if !ok {
			return fmt.Errorf("gguf: cannot write %s", types[i])
		}
		if t.Shape[len(t.Shape)-1]%ne != 0 {
			types[i], ne, nb = TypeF32, 1, 4
		}
		str(t.Name)
		binary.Write(bw, le, uint32(len(t.Shape)))
		for _, d := range slices.Backward(t.Shape) {
			binary.Write(bw, le, uint64(d))
		}
		binary.Write(bw, le, uint32(types[i]))
		binary.Write(bw, le, uint64(off))
		off += (int64(len(t.Data))/ne*nb + 31) / 32 * 32
	}
	for i, t := range ts {
		if bw.pad(); bw.err != nil {
			return bw.err
		}
		bw.Write(quantize(types[i], t.Data))
	}
	bw.pad()
	if bw.err != nil {
		return bw.err
	}
	return bw.Flush()
}

// countWriter counts what it is given and remembers the first error.
type countWriter struct {
	*bufio.Writer
	n   int64
	err error
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.Writer.Write(b)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

func (c *countWriter) WriteString(s string) (int, error) { return c.Write([]byte(s)) }

// pad writes zeros up to the next multiple of 32 bytes (the default alignment).
func (c *countWriter) pad() { c.Write(make([]byte, (32-c.n%32)%32)) }
