package detect

import (
	"bytes"
	"fmt"
)

// Distillation and dataset harvesting (threat 2): a principal that, within one UTC day,
// pulls a large volume of long outputs, around the clock, from diverse prompts built on a
// few templates or eliciting chain of thought. Each signal alone is common (batch jobs are
// templated, evaluation harnesses are diverse, agents are busy, some users write essays);
// the detector wants volume plus output weight plus automation plus either templating or
// chain-of-thought elicitation.

// dayStats is one principal's current UTC day, O(1) to update.
type dayStats struct {
	day        int64
	reqs       int
	promptToks int
	complToks  int
	cot        int    // prompts that ask for reasoning
	hours      uint32 // bit h: active in UTC hour h
	templated  int    // prompts whose skeleton is one of the principal's top skeletons
	skel       [4]skelCount
}

type skelCount struct {
	h uint64
	n int
}

// cotMarkers are phrases that ask a model to show its reasoning.
var cotMarkers = [][]byte{[]byte("step by step"), []byte("step-by-step"), []byte("show your reasoning"), []byte("explain your reasoning"),
	[]byte("think through"), []byte("chain of thought"), []byte("reason carefully"), []byte("show your work"), []byte("let's think"),
	[]byte("walk through"), []byte("reasoning"), []byte("think carefully")}

// asksForReasoning looks at the first and last 256 bytes (instructions sit at either end),
// lowercased on the stack: no allocation.
func asksForReasoning(p string) bool {
	var buf [512]byte
	n := 0
	lower := func(s string) {
		for i := 0; i < len(s); i++ {
			c := s[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf[n] = c
			n++
		}
	}
	if len(p) <= len(buf) {
		lower(p)
	} else {
		lower(p[:256])
		lower(p[len(p)-256:])
	}
	for _, m := range cotMarkers {
		if bytes.Contains(buf[:n], m) {
			return true
		}
	}
	return false
}

// skeleton hashes a prompt's first few words: the part a template keeps fixed.
func skeleton(p string) uint64 {
	n, i := 0, 0
	for i < len(p) && n < 4 {
		for i < len(p) && (p[i] == ' ' || p[i] == '\n' || p[i] == '\t') {
			i++
		}
		for i < len(p) && p[i] != ' ' && p[i] != '\n' && p[i] != '\t' {
			i++
		}
		n++
	}
	return hashLower(p[:i])
}

// hashLower is hash64 of the ASCII-lowercased string, without allocating.
func hashLower(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		h ^= uint64(c)
		h *= 1099511628211
	}
	return mix64(h)
}

func (d *dayStats) observe(r *Request, sk uint64, cot bool) {
	day := r.TS.Unix() / 86400
	if day != d.day {
		*d = dayStats{day: day}
	}
	d.reqs++
	d.promptToks += r.PromptTokens
	d.complToks += r.CompletionTokens
	d.hours |= 1 << uint(r.TS.UTC().Hour())
	if cot {
		d.cot++
	}
	// Top skeletons (space-saving over 4 counters).
	hit := false
	for i := range d.skel {
		if d.skel[i].h == sk && d.skel[i].n > 0 {
			d.skel[i].n++
			hit = true
			break
		}
	}
	if !hit {
		lo := 0
		for i := range d.skel {
			if d.skel[i].n < d.skel[lo].n {
				lo = i
			}
		}
		d.skel[lo] = skelCount{h: sk, n: d.skel[lo].n + 1}
	} else {
		d.templated++
	}
}

func popcount32(x uint32) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

// distillation scores the day so far; ok when it should alert.
func (c *Config) distillation(d *dayStats) (score float64, evidence string, ok bool) {
	if d.reqs < c.DistillMinRequests || d.complToks < c.DistillMinTokens {
		return 0, "", false
	}
	mean := float64(d.complToks) / float64(d.reqs)
	ratio := float64(d.complToks) / float64(max(d.promptToks, 1))
	hours := popcount32(d.hours)
	cotShare := float64(d.cot) / float64(d.reqs)
	tmplShare := float64(d.templated) / float64(d.reqs)
	heavy := mean >= float64(c.DistillMeanOutput) && ratio >= 2
	automated := hours >= c.DistillActiveHours
	structured := cotShare >= 0.3 || tmplShare >= 0.5
	score = float64(d.complToks) / float64(c.DistillMinTokens)
	if heavy && automated && structured {
		return score, fmt.Sprintf("%d requests today, %d output tokens (%.0f per request, %.1f× the input), active %d of 24 hours, %.0f%% ask for reasoning, %.0f%% on the top templates",
			d.reqs, d.complToks, mean, ratio, hours, 100*cotShare, 100*tmplShare), true
	}
	return score, "", false
}
