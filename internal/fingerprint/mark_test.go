package fingerprint

import (
	"fmt"
	"slices"
	"testing"

	"github.com/strongroom/strongroom/internal/testenv"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// candidates is n licensees "lic-000".."lic-NNN" of model.
func candidates(t testing.TB, model string, n int) []Candidate {
	out := make([]Candidate, n)
	for i := range out {
		name := fmt.Sprintf("lic-%03d", i)
		k, err := LicenseeKey(testSecret, model, name)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = Candidate{name, k}
	}
	return out
}

func markedCopy(t testing.TB, orig *Model, model, licensee string) *Model {
	mk, _ := ModelKey(testSecret, model)
	lk, err := LicenseeKey(testSecret, model, licensee)
	if err != nil {
		t.Fatal(err)
	}
	c := cloneModel(orig)
	Embed(c, mk, lk)
	return c
}

func TestTraceAttacks(t *testing.T) {
	const model = "m:1"
	orig := synthModel(10, 2, 128, 256, 512, 4, 2)
	mk, _ := ModelKey(testSecret, model)
	if testenv.Race {
		// The table's rates are one goroutine's statistics (~20 s under the race detector:
		// they run in scripts/test's second pass). Trace's and the alignment's workers are
		// raced on one permuted copy against 64 candidates.
		a := markedCopy(t, orig, model, "lic-007")
		r := Trace(orig, attackPermute(a, 5), mk, candidates(t, model, 64), 1e-6)
		if r.Verdict != VerdictLicensee || !slices.Equal(r.Named, []string{"lic-007"}) {
			t.Fatalf("permuted copy under -race: verdict %q %v; best %+v", r.Verdict, r.Named, r.Scores[:2])
		}
		return
	}
	cands := candidates(t, model, 1000)
	a, b := markedCopy(t, orig, model, "lic-007"), markedCopy(t, orig, model, "lic-421")
	other := synthModel(11, 2, 128, 256, 512, 4, 2)
	for _, c := range []struct {
		name  string
		copy  *Model
		named []string
	}{
		{"verbatim", a, []string{"lic-007"}},
		{"gguf q8_0", attackQuant(t, a, TypeQ8_0), []string{"lic-007"}},
		{"gguf q4_0", attackQuant(t, a, TypeQ4_0), []string{"lic-007"}},
		{"gguf q4_k", attackQuant(t, a, TypeQ4_K), []string{"lic-007"}},
		{"noise 5%", attackNoise(a, 0.05, 1), []string{"lic-007"}},
		{"noise 20%", attackNoise(a, 0.20, 2), []string{"lic-007"}},
		{"low-rank 20%", attackLowRank(a, 0.20, 8, 3), []string{"lic-007"}},
		{"4-bit + noise 20%", attackQuant(t, attackNoise(a, 0.20, 4), TypeQ4_0), []string{"lic-007"}},
		{"pruned 50%", attackPrune(a, 0.5), []string{"lic-007"}},
		{"partial (layer 0)", attackPartial(a), []string{"lic-007"}},
		{"renamed", attackRename(a), []string{"lic-007"}},
		{"permuted + signs", attackPermute(a, 5), []string{"lic-007"}},
		{"permuted + q8_0", attackQuant(t, attackPermute(a, 6), TypeQ8_0), []string{"lic-007"}},
		{"collusion", attackAverage(a, b), []string{"lic-007", "lic-421"}},
		{"original", orig, nil},
		{"unrelated", other, nil},
		{"merged with unrelated", attackAverage(a, other), nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := Trace(orig, c.copy, mk, cands, 1e-6)
			got := slices.Clone(r.Named)
			slices.Sort(got)
			for _, n := range got {
				if !slices.Contains([]string{"lic-007", "lic-421"}, n) {
					t.Fatalf("innocent licensee named: %s (%+v)", n, r.Scores[:3])
				}
			}
			if c.named == nil {
				return // anything but an innocent licensee is acceptable
			}
			if len(c.named) == 1 && (r.Verdict != VerdictLicensee || got[0] != c.named[0]) {
				t.Fatalf("verdict %q %v, want %v; best %+v", r.Verdict, got, c.named, r.Scores[:2])
			}
			if len(c.named) == 2 && (r.Verdict != VerdictCollusion || !slices.Equal(got, c.named)) {
				t.Fatalf("collusion: verdict %q %v; best %+v", r.Verdict, got, r.Scores[:2])
			}
			t.Logf("%s: z=%.1f p=%.2g tensors=%d align=%+v renamed=%d", c.name, r.Scores[0].Z, r.Scores[0].P, r.Tensors, r.Align, r.Renamed)
		})
	}
}

func TestKeys(t *testing.T) {
	k1, _ := LicenseeKey(testSecret, "m:1", "a")
	k2, _ := LicenseeKey(testSecret, "m:1", "b")
	k3, _ := LicenseeKey(testSecret, "m:2", "a")
	if k1 == k2 || k1 == k3 {
		t.Fatal("keys collide")
	}
	if _, err := LicenseeKey(testSecret[:8], "m:1", "a"); err == nil {
		t.Fatal("short secret accepted")
	}
	mk, _ := ModelKey(testSecret, "m:1")
	sub := mk.Subset("x", 100000)
	if f := float64(len(sub)) / 100000; f < 0.24 || f > 0.26 {
		t.Fatalf("subset fraction %g", f)
	}
}
