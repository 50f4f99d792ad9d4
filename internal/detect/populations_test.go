package detect

import (
	"hash/fnv"
	"slices"
	"testing"

	"github.com/strongroom/strongroom/internal/testenv"
)

func traceHash(reqs []Request) uint64 {
	h := fnv.New64a()
	for i := range reqs {
		r := &reqs[i]
		h.Write([]byte(r.TS.String() + "|" + r.Principal + "|" + r.IP + "|" + r.Prompt + "|" + r.Label))
	}
	return h.Sum64()
}

// TestHardNegativeScenarios: the issue-14 populations generate non-empty, deterministic,
// labelled-benign, one-day traces. Not a detector assertion.
func TestHardNegativeScenarios(t *testing.T) {
	testenv.StatisticsOnly(t)
	for _, sc := range hardNegativeScenarios {
		if !slices.Contains(Scenarios, sc) {
			t.Errorf("%s is not listed in Scenarios", sc)
		}
		if sc == "benign-outside" && testing.Short() {
			continue
		}
		a, err := Simulate(sc, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(a) == 0 {
			t.Fatalf("%s: empty trace", sc)
		}
		principals := map[string]bool{}
		for i := range a {
			r := &a[i]
			if r.Label != "benign" || r.Principal == "" || r.Prompt == "" || r.PromptTokens <= 0 || r.CompletionTokens <= 0 {
				t.Fatalf("%s: bad request %d: %+v", sc, i, r)
			}
			if d := r.TS.Format("2006-01-02"); d != "2026-11-01" {
				t.Fatalf("%s: request %d on %s, want one day", sc, i, d)
			}
			if i > 0 && r.TS.Before(a[i-1].TS) {
				t.Fatalf("%s: trace not in time order at %d", sc, i)
			}
			principals[r.Principal] = true
		}
		h := traceHash(a)
		b, _ := Simulate(sc, 1, 1)
		if len(b) != len(a) || traceHash(b) != h {
			t.Errorf("%s: seed 1 twice gave different traces", sc)
		}
		if c, _ := Simulate(sc, 2, 1); traceHash(c) == h {
			t.Errorf("%s: seeds 1 and 2 gave the same trace", sc)
		}
		t.Logf("%s: %d requests, %d principals", sc, len(a), len(principals))
		if sc == "benign-outside" && (len(principals) < 900 || len(principals) > 1100 || len(a) < 80000 || len(a) > 130000) {
			t.Errorf("benign-outside: %d principals, %d requests; want the outside trace's scale (≈ 1,000, ≈ 100k)", len(principals), len(a))
		}
	}
}
