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
	return mix64(h)
}

// mix64 is the splitmix64 finalizer.
func mix64(h uint64) uint64 {
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
	sim, _, _ := promptSigs(s)
	return sim
}

// promptSigs reads a prompt's words once and returns its SimHash (see simhash) and the two
// word signatures of wordSigs.
func promptSigs(s string) (sim uint64, set [2]uint64, ends [endWords * 2]uint8) {
	// Word hashes for the SimHash: the first maxFeatures/2+1 words and a ring of the last
	// maxFeatures/2.
	var head [maxFeatures/2 + 1]uint64
	var tailH [maxFeatures / 2]uint64
	var tailE [endWords]uint8
	n := 0
	start := -1
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ' ' || s[i] == '\n' || s[i] == '\t' {
			if start >= 0 {
				h := hash64(s[start:i])
				set[(h&127)>>6] |= 1 << (h & 63)
				e := uint8(h>>56) | 1 // never 0, which pads short prompts
				if n < endWords {
					ends[n] = e
				}
				tailE[n%endWords] = e
				if n < len(head) {
					head[n] = h
				} else {
					tailH[(n-len(head))%len(tailH)] = h
				}
				n++
				start = -1
			}
			continue
		}
		if start < 0 {
			start = i
		}
	}
	for k := range min(n, endWords) { // the last words, last one at the end
		ends[2*endWords-1-k] = tailE[(n-1-k)%endWords]
	}
	// The words in order: head, then the ring's contents oldest first.
	var words [maxFeatures + 1]uint64
	m := copy(words[:], head[:min(n, len(head))])
	if extra := n - len(head); extra > 0 {
		kept := min(extra, len(tailH))
		for k := range kept {
			words[m] = tailH[(extra-kept+k)%len(tailH)]
			m++
		}
	}
	// Per-bit majority over the features, with bit-sliced counters (c[j] holds bit j of
	// every position's count): a few word operations per feature instead of 64 adds.
	var c [8]uint64
	f := 0
	add := func(h uint64) {
		f++
		carry := h
		for j := 0; j < len(c) && carry != 0; j++ {
			c[j], carry = c[j]^carry, c[j]&carry
		}
	}
	for i := 0; i < m; i++ {
		if m < 8 || i+1 < m {
			h := words[i]
			if i+1 < m {
				h = words[i+1] ^ bits.RotateLeft64(h, 17)
			}
			add(h)
		}
	}
	for k := 0; k < 64; k++ {
		cnt := 0
		for j := range c {
			cnt |= int(c[j]>>k&1) << j
		}
		if 2*cnt > f {
			sim |= 1 << k
		}
	}
	return sim, set, ends
}

func hamming(a, b uint64) int { return bits.OnesCount64(a ^ b) }

func exactHash(s string) uint64 { return hash64(s) }

// endWords is how many words at each end of a prompt editPlace can see.
const endWords = 16

// The word signatures (promptSigs): a 128-bit set of the words (one bit per word hash) —
// prompts differing by a few swapped, inserted or deleted words differ in about two bits
// per edit, whatever their length, while different prompts differ in dozens — and 8-bit
// hashes of the first and of the last endWords words (the last right-aligned), which say
// where an edit happened (editPlace).

// editPlace says where two near-duplicate prompts start to differ: the number of equal
// leading words if under endWords, else endWords plus the number of equal trailing words
// (at most endWords-1). A swap, an insertion or a deletion at word j gives the same place
// for both prompts of a pair, and different j give different places near either end.
func editPlace(a, b *[endWords * 2]uint8) int8 {
	p := 0
	for p < endWords && a[p] == b[p] {
		p++
	}
	if p < endWords {
		return int8(p)
	}
	q := 0
	for q < endWords-1 && a[2*endWords-1-q] == b[2*endWords-1-q] {
		q++
	}
	return int8(endWords + q)
}
