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
	// CampaignFraction is, for multi-key attacks, the share of the whole campaign's attack
	// requests sent before its first alert (1 if never detected).
	CampaignFraction float64 `json:",omitempty"`
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
	campTotal, campSeen, campAt := map[string]int{}, map[string]int{}, map[string]int{}
	for _, r := range reqs {
		if r.Label != "" && r.Label == attackOf[r.Principal] {
			campTotal[r.Label]++
		}
	}
	for i := range reqs {
		r := &reqs[i]
		if attackOf[r.Principal] == "" {
			benignDays[r.Principal+"@"+r.TS.Format("2006-01-02")] = true
		}
		if r.Label == attackOf[r.Principal] && r.Label != "" {
			attackCount[r.Principal]++
			campSeen[r.Label]++
		}
		for _, a := range e.Observe(i, r) {
			if lbl := attackOf[a.Principal]; lbl != "" {
				if _, seen := campAt[lbl]; !seen {
					campAt[lbl] = campSeen[lbl]
				}
				if _, seen := detectedAt[a.Principal]; !seen {
					detectedAt[a.Principal] = attackCount[a.Principal]
				}
			} else if aday := a.Principal + "@" + a.TS.Format("2006-01-02"); !fpDays[aday] {
				fpDays[aday] = true
				res.FalsePositiveDetails = append(res.FalsePositiveDetails, fmt.Sprintf("%s %s: %s", aday, a.Detector, a.Evidence))
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
	for lbl, sc := range res.Attacks {
		sort.Ints(sc.QueriesToDetection)
		sc.CampaignFraction = 1
		if at, ok := campAt[lbl]; ok {
			sc.CampaignFraction = float64(at) / float64(max(campTotal[lbl], 1))
		}
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
		q := sc.QueriesToDetection
		if len(q) > 8 {
			q = []int{q[0], q[len(q)/2], q[len(q)-1]} // min, median, max
		}
		fmt.Fprintf(&b, "%-14s detected %d/%d (TPR %.2f), queries to detection %v, campaign share before first alert %.3f\n", n, sc.Detected, sc.Principals,
			float64(sc.Detected)/float64(max(sc.Principals, 1)), q, sc.CampaignFraction)
	}
	return b.String()
}
