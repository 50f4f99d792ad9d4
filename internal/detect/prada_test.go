package detect

import (
	"math/rand/v2"
	"testing"
)

// Shapiro–Wilk on a normal sample is near 1; on a sample of mostly tiny distances with a
// few large ones it is far lower.
func TestShapiroWilk(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var normal, skewed [pradaN]uint8
	for i := range normal {
		normal[i] = uint8(max(0, min(64, int(28+4*r.NormFloat64()))))
		skewed[i] = uint8(2 + r.IntN(3))
		if i%10 == 0 {
			skewed[i] = 30
		}
	}
	wn, ws := shapiroWilk(&normal), shapiroWilk(&skewed)
	if wn < 0.93 || ws > 0.7 {
		t.Fatalf("W normal %.3f, skewed %.3f", wn, ws)
	}
	var flat [pradaN]uint8
	if shapiroWilk(&flat) != 1 {
		t.Fatal("no spread should give no opinion")
	}
}

// With a threshold set, the engine raises "prada" and its W reaches the probing evidence.
func TestPradaInEngine(t *testing.T) {
	reqs, _ := Simulate("probing", 5, 1)
	e := New(Config{PradaW: 0.95})
	var prada int
	probers := map[string]bool{} // probing re-alerts as its evidence accumulates: count principals
	for i := range reqs {
		for _, a := range e.Observe(i, &reqs[i]) {
			switch a.Detector {
			case "prada":
				prada++
			case "probing":
				probers[a.Principal] = true
			}
		}
	}
	if probing := len(probers); prada == 0 || probing != 3 {
		t.Fatalf("prada alerts %d, probing alerts %d", prada, probing)
	}
	if off := New(Config{}); off.cfg.PradaW != 0 {
		t.Fatal("PRADA alerting should be off by default")
	}
}
