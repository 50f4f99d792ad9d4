package fingerprint

import (
	"math/rand/v2"
	"runtime"
)

// Scoring many licensees against one residual. Every candidate's score is Σ r_i s_i over
// the same weighted residual r with its own signs s, so the work is candidates × marked
// weights (31M weights × 1,000 candidates at 125M parameters). Rather than draw each
// candidate's signs into an array and multiply, the residual is cut into chunks of
// signChunk elements; for each group of 8 elements of a chunk, a table holds the 256
// signed sums Σ ±r_i (bit i of the index set: minus), so one byte of a candidate's sign
// stream (8 signs, low bit first, as Key.Signs draws them) is one table look-up. The
// tables are built once per chunk and shared by every candidate, and a chunk's tables
// (signChunk/8 × 256 float32: 256 KiB) stay in cache while all candidates pass over them.

const signChunk = 2048 // a multiple of 64: a chunk starts on a fresh word of the stream

// signedSums returns, for each candidate, Σ over parts of Σ_j v_j s_j with s_j its sign
// of tensor name (the j-th draw of Key.Signs(name, len(v))).
func signedSums(parts []residualPart, cands []Candidate) []float64 {
	sums := make([]float64, len(cands))
	workers := min(runtime.GOMAXPROCS(0), max(1, len(cands)))
	tables := make([]float32, signChunk/8*256)
	streams := make([]*rand.ChaCha8, len(cands))
	for _, p := range parts {
		parallel(len(cands), func(c int) error {
			streams[c] = cands[c].Key.stream("signs", p.name)
			return nil
		})
		for off := 0; off < len(p.v); off += signChunk {
			chunk := p.v[off:min(off+signChunk, len(p.v))]
			groups := (len(chunk) + 7) / 8
			// build the tables, the groups split between workers
			parallel(workers, func(w int) error {
				for g := w; g < groups; g += workers {
					buildSignTable(tables[g*256:(g+1)*256], chunk[8*g:min(8*g+8, len(chunk))])
				}
				return nil
			})
			words := (len(chunk) + 63) / 64
			parallel(workers, func(w int) error {
				for c := w; c < len(cands); c += workers {
					s := streams[c]
					var acc float32
					for k := range words {
						x := s.Uint64()
						t := tables[k*8*256:]
						last := min(8, groups-k*8)
						for g := range last {
							acc += t[g*256+int(x&0xff)]
							x >>= 8
						}
					}
					sums[c] += float64(acc)
				}
				return nil
			})
		}
	}
	return sums
}

// buildSignTable fills t[b] = Σ_i (bit i of b ? −x_i : x_i) for the (at most 8) x given;
// missing elements count as 0. Each bit doubles the table filled so far.
func buildSignTable(t []float32, x []float32) {
	t = t[:256]
	var all float32
	for _, v := range x {
		all += v
	}
	t[0] = all
	for i := range 8 {
		var d float32
		if i < len(x) {
			d = 2 * x[i]
		}
		lo, hi := t[:1<<i], t[1<<i:2<<i]
		for b, v := range lo {
			hi[b] = v - d
		}
	}
}
