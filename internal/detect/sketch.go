package detect

import (
	"math/bits"
)

// hash64 is FNV-1a with a splitmix64 finalizer: fixed (replays and evaluations are
// reproducible across processes) and well mixed in every bit, which SimHash needs.
func hash64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// maxFeatures bounds the work per prompt: the first and last 64 word bigrams.
const maxFeatures = 128

// simhash is a 64-bit SimHash over a prompt's word bigrams (and the words themselves for
// short prompts): prompts that differ by a few small edits land a few bits apart, unrelated
// prompts about 32 apart. Work is bounded by maxFeatures whatever the prompt length.
func simhash(s string) uint64 {
	var words [maxFeatures + 1]string
	n := 0
	total := 0
	start := -1
	tail := make([]string, 0, maxFeatures/2)
	emit := func(w string) {
		total++
		if n < maxFeatures/2+1 {
			words[n] = w
			n++
			return
		}
		if len(tail) == maxFeatures/2 {
			copy(tail, tail[1:])
			tail = tail[:len(tail)-1]
		}
		tail = append(tail, w)
	}
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ' ' || s[i] == '\n' || s[i] == '\t' {
			if start >= 0 {
				emit(s[start:i])
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	n += copy(words[n:], tail)
	// Per-bit majority over the features, with bit-sliced counters (c[j] holds bit j of
	// every position's count): a few word operations per feature instead of 64 adds.
	var c [8]uint64
	m := 0
	add := func(h uint64) {
		m++
		carry := h
		for j := 0; j < len(c) && carry != 0; j++ {
			c[j], carry = c[j]^carry, c[j]&carry
		}
	}
	for i := 0; i < n; i++ {
		if n < 8 || i+1 < n {
			h := hash64(words[i])
			if i+1 < n {
				h = hash64(words[i+1]) ^ bits.RotateLeft64(h, 17)
			}
			add(h)
		}
	}
	var out uint64
	for k := 0; k < 64; k++ {
		cnt := 0
		for j := range c {
			cnt |= int(c[j]>>k&1) << j
		}
		if 2*cnt > m {
			out |= 1 << k
		}
	}
	return out
}

func hamming(a, b uint64) int { return bits.OnesCount64(a ^ b) }

func exactHash(s string) uint64 { return hash64(s) }
