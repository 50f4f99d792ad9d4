package detect

import (
	"math"
	"sync"
)

// PRADA (Juuti et al. 2019) as a second opinion on probing: the distances from each new
// query to its nearest earlier query are roughly normal for benign traffic and far from
// normal for synthetic, crafted query streams. We keep the last pradaN nearest-neighbour
// SimHash distances per principal and compute the Shapiro–Wilk W statistic over them every
// pradaEvery new distances; W below Config.PradaW raises the "prada" detector.

const (
	pradaN     = 64
	pradaEvery = 16
)

var (
	swOnce sync.Once
	swA    [pradaN]float64
)

// swCoefficients are Royston's (1992) approximation of the Shapiro–Wilk weights for n = pradaN.
func swCoefficients() *[pradaN]float64 {
	swOnce.Do(func() {
		n := float64(pradaN)
		var m [pradaN]float64
		mm := 0.0
		for i := range m {
			p := (float64(i+1) - 0.375) / (n + 0.25)
			m[i] = math.Sqrt2 * math.Erfinv(2*p-1)
			mm += m[i] * m[i]
		}
		u := 1 / math.Sqrt(n)
		poly := func(c [6]float64) float64 {
			return c[0]*math.Pow(u, 5) + c[1]*math.Pow(u, 4) + c[2]*math.Pow(u, 3) + c[3]*u*u + c[4]*u + c[5]
		}
		an := poly([6]float64{-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, m[pradaN-1] / math.Sqrt(mm)})
		an1 := poly([6]float64{-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, m[pradaN-2] / math.Sqrt(mm)})
		phi := (mm - 2*m[pradaN-1]*m[pradaN-1] - 2*m[pradaN-2]*m[pradaN-2]) / (1 - 2*an*an - 2*an1*an1)
		for i := 2; i < pradaN-2; i++ {
			swA[i] = m[i] / math.Sqrt(phi)
		}
		swA[pradaN-1], swA[pradaN-2], swA[0], swA[1] = an, an1, -an, -an1
	})
	return &swA
}

// shapiroWilk returns W for distances in 0..64, sorting by counting (no allocation). A
// sample without spread returns 1 (no opinion).
func shapiroWilk(xs *[pradaN]uint8) float64 {
	var count [65]int
	sum := 0.0
	for _, x := range xs {
		count[x]++
		sum += float64(x)
	}
	mean := sum / pradaN
	ss := 0.0
	for _, x := range xs {
		d := float64(x) - mean
		ss += d * d
	}
	if ss == 0 {
		return 1
	}
	a := swCoefficients()
	num, i := 0.0, 0
	for v, c := range count {
		for range c {
			num += a[i] * float64(v)
			i++
		}
	}
	return num * num / ss
}

// pradaState is per principal: a ring of nearest-neighbour distances.
type pradaState struct {
	d     [pradaN]uint8
	n     int
	fresh int
	w     float64
}

// add records a distance and returns W when a new value was computed.
func (p *pradaState) add(d int) (float64, bool) {
	p.d[p.n%pradaN] = uint8(min(d, 64))
	p.n++
	p.fresh++
	if p.n < pradaN || p.fresh < pradaEvery {
		return 0, false
	}
	p.fresh = 0
	p.w = shapiroWilk(&p.d)
	return p.w, true
}
