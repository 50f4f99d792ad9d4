package detect

import "slices"

// Calibration is the distribution of each benign prompt's SimHash distance to its nearest
// earlier prompt of the same principal within the probing window (Chen, Carlini & Wagner
// 2019 set the near-duplicate threshold at the 0.1st percentile of benign distances).
type Calibration struct {
	N              int `json:"n"`
	P001, P01, P50 int // 0.1st, 1st and 50th percentiles, in bits
	Suggested      int `json:"suggested_probe_bits"`
}

// Calibrate measures benign (unlabelled or "benign") requests of a trace.
func Calibrate(reqs []Request, window int) Calibration {
	type ring struct {
		sk, ex []uint64
		pos    int
	}
	rings := map[string]*ring{}
	var ds []int
	for i := range reqs {
		r := &reqs[i]
		if r.Prompt == "" || (r.Label != "" && r.Label != "benign") {
			continue
		}
		sk, ex := simhash(r.Prompt), exactHash(r.Prompt)
		rg := rings[r.Principal]
		if rg == nil {
			rg = &ring{}
			rings[r.Principal] = rg
		}
		best := -1
		for k := range rg.sk {
			if rg.ex[k] == ex { // identical retries are not probing either way
				continue
			}
			if d := hamming(rg.sk[k], sk); best < 0 || d < best {
				best = d
			}
		}
		if best >= 0 {
			ds = append(ds, best)
		}
		if len(rg.sk) < window {
			rg.sk, rg.ex = append(rg.sk, sk), append(rg.ex, ex)
		} else {
			rg.sk[rg.pos], rg.ex[rg.pos] = sk, ex
			rg.pos = (rg.pos + 1) % window
		}
	}
	c := Calibration{N: len(ds)}
	if len(ds) == 0 {
		return c
	}
	slices.Sort(ds)
	at := func(q float64) int { return ds[min(int(q*float64(len(ds))), len(ds)-1)] }
	c.P001, c.P01, c.P50 = at(0.001), at(0.01), at(0.5)
	c.Suggested = max(c.P001-1, 0) // strictly below what benign traffic reaches
	return c
}
