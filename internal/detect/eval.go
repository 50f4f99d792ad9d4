package detect

import (
	"fmt"
	"sort"
	"strings"
)

// EvalResult scores alerts against a trace's labels.
type EvalResult struct {
	BenignPrincipalDays  int
	FalsePositiveDays    int
	Attacks              map[string]*AttackScore
	FalsePositiveDetails []string
}

// AttackScore is the outcome for one attack label.
type AttackScore struct {
	Principals, Detected int
	// QueriesToDetection are, per detected principal, how many of its attack requests came
	// before the alert (inclusive).
	QueriesToDetection []int
}

// FPR is false-positive principal-days over benign principal-days.
func (r *EvalResult) FPR() float64 {
	if r.BenignPrincipalDays == 0 {
		return 0
	}
	return float64(r.FalsePositiveDays) / float64(r.BenignPrincipalDays)
}

// Evaluate replays a labelled trace through an engine. A principal is an attacker for an
// attack label if any of its requests carries it; its other requests are its cover.
func Evaluate(reqs []Request, e *Engine) *EvalResult {
	res := &EvalResult{Attacks: map[string]*AttackScore{}}
	attackOf := map[string]string{}
	for _, r := range reqs {
		if r.Label != "" && r.Label != "benign" {
			attackOf[r.Principal] = r.Label
		}
	}
	benignDays := map[string]bool{}
	fpDays := map[string]bool{}
	attackCount := map[string]int{}
	detectedAt := map[string]int{}
	for i := range reqs {
		r := &reqs[i]
		day := r.Principal + "@" + r.TS.Format("2006-01-02")
		if attackOf[r.Principal] == "" {
			benignDays[day] = true
		}
		if r.Label == attackOf[r.Principal] && r.Label != "" {
			attackCount[r.Principal]++
		}
		for _, a := range e.Observe(i, r) {
			if lbl := attackOf[a.Principal]; lbl != "" {
				if _, seen := detectedAt[a.Principal]; !seen {
					detectedAt[a.Principal] = attackCount[a.Principal]
				}
			} else if !fpDays[day] {
				fpDays[day] = true
				res.FalsePositiveDetails = append(res.FalsePositiveDetails, fmt.Sprintf("%s %s: %s", day, a.Detector, a.Evidence))
			}
		}
	}
	res.BenignPrincipalDays, res.FalsePositiveDays = len(benignDays), len(fpDays)
	for p, lbl := range attackOf {
		sc := res.Attacks[lbl]
		if sc == nil {
			sc = &AttackScore{}
			res.Attacks[lbl] = sc
		}
		sc.Principals++
		if q, ok := detectedAt[p]; ok {
			sc.Detected++
			sc.QueriesToDetection = append(sc.QueriesToDetection, q)
		}
	}
	for _, sc := range res.Attacks {
		sort.Ints(sc.QueriesToDetection)
	}
	return res
}

// Table renders the result.
func (r *EvalResult) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "benign principal-days: %d, with a false alert: %d (FPR %.4f)\n", r.BenignPrincipalDays, r.FalsePositiveDays, r.FPR())
	names := make([]string, 0, len(r.Attacks))
	for n := range r.Attacks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		sc := r.Attacks[n]
		fmt.Fprintf(&b, "%-14s detected %d/%d (TPR %.2f), queries to detection %v\n", n, sc.Detected, sc.Principals, float64(sc.Detected)/float64(max(sc.Principals, 1)), sc.QueriesToDetection)
	}
	return b.String()
}
