package fingerprint

import (
	"encoding/binary"
	"math"
)

// GGMLType is a GGUF tensor's storage type (ggml.h's enum ggml_type).
type GGMLType uint32

// The storage types read here. SPEC: ggml/include/ggml.h, ggml/src/ggml-quants.c
// (dequantize_row_*), llama.cpp at b3000 or later.
const (
	TypeF32  GGMLType = 0
	TypeF16  GGMLType = 1
	TypeQ4_0 GGMLType = 2
	TypeQ8_0 GGMLType = 8
	TypeQ4_K GGMLType = 12
	TypeQ6_K GGMLType = 14
	TypeBF16 GGMLType = 30
)

// blockInfo is (elements per block, bytes per block); ok false for types not read.
func blockInfo(t GGMLType) (elems, bytes int64, ok bool) {
	switch t {
	case TypeF32:
		return 1, 4, true
	case TypeF16, TypeBF16:
		return 1, 2, true
	case TypeQ4_0:
		return 32, 18, true
	case TypeQ8_0:
		return 32, 34, true
	case TypeQ4_K:
		return 256, 144, true
	case TypeQ6_K:
		return 256, 210, true
	}
	return 0, 0, false
}

func (t GGMLType) String() string {
	switch t {
	case TypeF32:
		return "F32"
	case TypeF16:
		return "F16"
	case TypeBF16:
		return "BF16"
	case TypeQ4_0:
		return "Q4_0"
	case TypeQ8_0:
		return "Q8_0"
	case TypeQ4_K:
		return "Q4_K"
	case TypeQ6_K:
		return "Q6_K"
	}
	return "type" + itoa(int64(t))
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// dequantize decodes src (whole blocks of t) into dst.
func dequantize(t GGMLType, src []byte, dst []float32) {
	h := func(b []byte) float32 { return F16ToF32(binary.LittleEndian.Uint16(b)) }
	switch t {
	case TypeF32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case TypeF16:
		for i := range dst {
			dst[i] = h(src[2*i:])
		}
	case TypeBF16:
		for i := range dst {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case TypeQ8_0:
		for b := 0; b < len(dst)/32; b++ {
			blk, y := src[34*b:34*b+34], dst[32*b:32*b+32]
			d := h(blk)
			for j := range 32 {
				y[j] = d * float32(int8(blk[2+j]))
			}
		}
	case TypeQ4_0:
		for b := 0; b < len(dst)/32; b++ {
			blk, y := src[18*b:18*b+18], dst[32*b:32*b+32]
			d, qs := h(blk), blk[2:]
			for j := range 16 {
				y[j] = d * float32(int(qs[j]&0xf)-8)
				y[j+16] = d * float32(int(qs[j]>>4)-8)
			}
		}
	case TypeQ4_K:
		for b := 0; b < len(dst)/256; b++ {
			blk, y := src[144*b:144*b+144], dst[256*b:256*b+256]
			d, dmin, scales, q := h(blk), h(blk[2:]), blk[4:16], blk[16:144]
			is := 0
			for j := 0; j < 256; j += 64 {
				sc, m := scaleMinK4(is, scales)
				d1, m1 := d*float32(sc), dmin*float32(m)
				sc, m = scaleMinK4(is+1, scales)
				d2, m2 := d*float32(sc), dmin*float32(m)
				for l := range 32 {
					y[j+l] = d1*float32(q[l]&0xf) - m1
					y[j+32+l] = d2*float32(q[l]>>4) - m2
				}
				q = q[32:]
				is += 2
			}
		}
	case TypeQ6_K:
		for b := 0; b < len(dst)/256; b++ {
			blk, y := src[210*b:210*b+210], dst[256*b:256*b+256]
			ql, qh, sc, d := blk[0:128], blk[128:192], blk[192:208], h(blk[208:])
			for n := 0; n < 256; n += 128 {
				for l := range 32 {
					is := l / 16
					q1 := int(ql[l]&0xf|(qh[l]>>0&3)<<4) - 32
					q2 := int(ql[l+32]&0xf|(qh[l]>>2&3)<<4) - 32
					q3 := int(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
					q4 := int(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
					y[n+l] = d * float32(int8(sc[is])) * float32(q1)
					y[n+l+32] = d * float32(int8(sc[is+2])) * float32(q2)
					y[n+l+64] = d * float32(int8(sc[is+4])) * float32(q3)
					y[n+l+96] = d * float32(int8(sc[is+6])) * float32(q4)
				}
				ql, qh, sc = ql[64:], qh[32:], sc[8:]
			}
		}
	}
}

// scaleMinK4 unpacks the j-th 6-bit scale and min of a Q4_K block (get_scale_min_k4).
func scaleMinK4(j int, q []byte) (d, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0xf | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// quantize encodes src (a multiple of the block size) as t; the inverse of dequantize up
// to rounding. Q4_K and Q6_K use plain absmax/min-max scales (not llama.cpp's search),
// which gives the same format with slightly larger error.
func quantize(t GGMLType, src []float32) []byte {
	ne, nb, _ := blockInfo(t)
	out := make([]byte, int64(len(src))/ne*nb)
	put16 := func(b []byte, x float32) { binary.LittleEndian.PutUint16(b, F32ToF16(x)) }
	switch t {
	case TypeF32:
		for i, x := range src {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
		}
	case TypeF16:
		for i, x := range src {
			put16(out[2*i:], x)
		}
	case TypeBF16:
		for i, x := range src {
			binary.LittleEndian.PutUint16(out[2*i:], F32ToBF16(x))
		}
	case TypeQ8_0:
		for b := 0; b < len(src)/32; b++ {
			x, blk := src[32*b:32*b+32], out[34*b:34*b+34]
			amax := absmax(x)
			d := amax / 127
			put16(blk, d)
			for j := range 32 {
				blk[2+j] = byte(int8(roundDiv(x[j], d, -127, 127)))
			}
		}
	case TypeQ4_0:
		for b := 0; b < len(src)/32; b++ {
			x, blk := src[32*b:32*b+32], out[18*b:18*b+18]
			var mx float32 // the signed value of largest magnitude maps to -8
			for _, v := range x {
				if abs32(v) > abs32(mx) {
					mx = v
				}
			}
			d := mx / -8
			put16(blk, d)
			for j := range 16 {
				lo := roundDiv(x[j], d, -8, 7) + 8
				hi := roundDiv(x[j+16], d, -8, 7) + 8
				blk[2+j] = byte(lo) | byte(hi)<<4
			}
		}
	case TypeQ6_K:
		for b := 0; b < len(src)/256; b++ {
			x, blk := src[256*b:256*b+256], out[210*b:210*b+210]
			var sub [16]float32
			var smax float32
			for s := range 16 {
				sub[s] = absmax(x[16*s:16*s+16]) / 31
				smax = max(smax, sub[s])
			}
			d := smax / 127
			put16(blk[208:], d)
			d = F16ToF32(F32ToF16(d))
			sc := blk[192:208]
			var q [256]int
			for s := range 16 {
				si := roundDiv(sub[s], d, -128, 127)
				sc[s] = byte(int8(si))
				ds := d * float32(si)
				for l := range 16 {
					q[16*s+l] = roundDiv(x[16*s+l], ds, -32, 31) + 32
				}
			}
			ql, qh := blk[0:128], blk[128:192]
			for n := 0; n < 256; n += 128 {
				for l := range 32 {
					q1, q2, q3, q4 := q[n+l], q[n+l+32], q[n+l+64], q[n+l+96]
					ql[l] = byte(q1&0xf | (q3&0xf)<<4)
					ql[l+32] = byte(q2&0xf | (q4&0xf)<<4)
					qh[l] = byte(q1>>4 | (q2>>4)<<2 | (q3>>4)<<4 | (q4>>4)<<6)
				}
				ql, qh = ql[64:], qh[32:]
			}
		}
	case TypeQ4_K:
		for b := 0; b < len(src)/256; b++ {
			x, blk := src[256*b:256*b+256], out[144*b:144*b+144]
			var scl, mins [8]float32
			var smax, mmax float32
			for s := range 8 {
				lo, hi := x[32*s], x[32*s]
				for _, v := range x[32*s : 32*s+32] {
					lo, hi = min(lo, v), max(hi, v)
				}
				lo = min(lo, 0)
				scl[s], mins[s] = (hi-lo)/15, -lo
				smax, mmax = max(smax, scl[s]), max(mmax, mins[s])
			}
			d, dmin := smax/63, mmax/63
			put16(blk, d)
			put16(blk[2:], dmin)
			d, dmin = F16ToF32(F32ToF16(d)), F16ToF32(F32ToF16(dmin))
			var ls, lm [8]int
			for s := range 8 {
				ls[s], lm[s] = roundDiv(scl[s], d, 0, 63), roundDiv(mins[s], dmin, 0, 63)
			}
			scales := blk[4:16]
			for j := range 8 {
				if j < 4 {
					scales[j] = byte(ls[j])
					scales[j+4] = byte(lm[j])
				} else {
					scales[j+4] = byte(ls[j]&0xf | (lm[j]&0xf)<<4)
					scales[j-4] |= byte(ls[j]>>4) << 6
					scales[j] |= byte(lm[j]>>4) << 6
				}
			}
			qs := blk[16:144]
			for j := 0; j < 256; j += 64 {
				s := j / 32
				d1, m1 := d*float32(ls[s]), dmin*float32(lm[s])
				d2, m2 := d*float32(ls[s+1]), dmin*float32(lm[s+1])
				for l := range 32 {
					a := roundDiv(x[j+l]+m1, d1, 0, 15)
					c := roundDiv(x[j+32+l]+m2, d2, 0, 15)
					qs[j/2+l] = byte(a | c<<4)
				}
			}
		}
	}
	return out
}

func absmax(x []float32) float32 {
	var m float32
	for _, v := range x {
		m = max(m, abs32(v))
	}
	return m
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// roundDiv is round(x/d) clamped to [lo, hi], 0 when d is 0.
func roundDiv(x, d float32, lo, hi int) int {
	if d == 0 {
		return max(lo, min(hi, 0))
	}
	return max(lo, min(hi, int(math.Round(float64(x/d)))))
}
