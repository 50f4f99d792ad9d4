package detect

import (
	"hash/maphash"
	"math/bits"
)

var seed = maphash.MakeSeed()

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
	var acc [64]int
	add := func(h uint64) {
		for k := 0; k < 64; k++ {
			acc[k] += int(h>>k&1)*2 - 1
		}
	}
	var h maphash.Hash
	h.SetSeed(seed)
	for i := 0; i < n; i++ {
		h.Reset()
		h.WriteString(words[i])
		if n < 8 || i+1 < n {
			if i+1 < n {
				h.WriteByte(' ')
				h.WriteString(words[i+1])
			}
			add(h.Sum64())
		}
	}
	var out uint64
	for k := range acc {
		if acc[k] > 0 {
			out |= 1 << k
		}
	}
	return out
}

func hamming(a, b uint64) int { return bits.OnesCount64(a ^ b) }

func exactHash(s string) uint64 { return maphash.String(seed, s) }
