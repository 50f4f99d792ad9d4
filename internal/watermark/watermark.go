// Package watermark embeds and detects keyed statistical watermarks in generated text: the
// green-list scheme of Kirchenbauer et al. (2023), with keys derived per tenant so that a
// detected text names the tenant whose output it was.
//
// At each step the previous token and the tenant key select a pseudo-random "green" fraction
// γ of the vocabulary, whose logits get +δ before sampling. A detector that knows the key
// counts green tokens among T scored tokens: z = (s_G − γT)/√(Tγ(1−γ)), with the exact
// binomial tail as the p-value. A (previous token, token) pair is scored once per text, so
// repeated spans do not inflate the score.
package watermark

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Params of the scheme.
type Params struct {
	Gamma float64 // green fraction, e.g. 0.25
	Delta float64 // logit boost, e.g. 2.0
}

// DefaultParams are Kirchenbauer et al.'s commonly used setting.
func DefaultParams() Params { return Params{Gamma: 0.25, Delta: 2.0} }

// Key is one tenant's watermark key.
type Key struct {
	Tenant    string
	Params    Params
	mac       []byte
	threshold uint64 // γ·2^64
}

// DeriveKey derives a tenant's key from the deployment's watermark secret (HKDF-SHA256).
func DeriveKey(secret []byte, tenant string, p Params) (*Key, error) {
	if len(secret) < 32 {
		return nil, errors.New("watermark: secret must be at least 32 bytes")
	}
	if p.Gamma <= 0 || p.Gamma >= 1 || p.Delta < 0 {
		return nil, fmt.Errorf("watermark: bad params %+v", p)
	}
	k, err := hkdf.Key(sha256.New, secret, nil, "strongroom/watermark/v1\x00"+tenant, 32)
	if err != nil {
		return nil, err
	}
	return &Key{Tenant: tenant, Params: p, mac: k, threshold: uint64(p.Gamma * math.Exp2(64))}, nil
}

// seedFor is the PRF output for a context (the previous token).
func (k *Key) seedFor(prev int) uint64 {
	m := hmac.New(sha256.New, k.mac)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(prev))
	m.Write(b[:])
	return binary.BigEndian.Uint64(m.Sum(nil))
}

// green reports whether tok is green after a context with the given seed: a keyed hash of
// (seed, token) below γ·2^64. O(1) per token, no permutation materialized.
func (k *Key) green(seed uint64, tok int) bool { return gbits(seed, tok) < k.threshold }

// Bias adds δ to the logits of the green tokens after prev (the sampling-time hook).
func (k *Key) Bias(prev int, logits []float64) {
	seed := k.seedFor(prev)
	for t := range logits {
		if k.green(seed, t) {
			logits[t] += k.Params.Delta
		}
	}
}

// Score is a detection result.
type Score struct {
	Tenant string
	Scored int     // tokens scored (repeated context/token pairs counted once)
	Green  int     // of which green
	Z      float64 // z-score
	P      float64 // exact one-sided binomial p-value
}

// Detect scores a token sequence (the first token is context only).
func (k *Key) Detect(tokens []int) Score {
	seen := map[[2]int]bool{}
	s := Score{Tenant: k.Tenant}
	seeds := map[int]uint64{}
	for i := 1; i < len(tokens); i++ {
		pair := [2]int{tokens[i-1], tokens[i]}
		if seen[pair] {
			continue
		}
		seen[pair] = true
		seed, ok := seeds[tokens[i-1]]
		if !ok {
			seed = k.seedFor(tokens[i-1])
			seeds[tokens[i-1]] = seed
		}
		s.Scored++
		if k.green(seed, tokens[i]) {
			s.Green++
		}
	}
	g := k.Params.Gamma
	if s.Scored > 0 {
		T := float64(s.Scored)
		s.Z = (float64(s.Green) - g*T) / math.Sqrt(T*g*(1-g))
	}
	s.P = binomTail(s.Scored, s.Green, g)
	return s
}

// binomTail is P(X >= k) for X ~ Binomial(n, p), summed in log space.
func binomTail(n, k int, p float64) float64 {
	if k <= 0 {
		return 1
	}
	if k > n {
		return 0
	}
	lp, lq := math.Log(p), math.Log1p(-p)
	lg := func(x int) float64 { v, _ := math.Lgamma(float64(x) + 1); return v }
	maxT := math.Inf(-1)
	terms := make([]float64, 0, n-k+1)
	for i := k; i <= n; i++ {
		t := lg(n) - lg(i) - lg(n-i) + float64(i)*lp + float64(n-i)*lq
		terms = append(terms, t)
		maxT = math.Max(maxT, t)
	}
	var sum float64
	for _, t := range terms {
		sum += math.Exp(t - maxT)
	}
	return math.Min(1, math.Exp(maxT)*sum)
}

// Verdict says whether a score is watermarked at false-positive rate alpha.
func (s Score) Verdict(alpha float64) bool { return s.Scored > 0 && s.P <= alpha }

// DetectAll scores the tokens under every tenant key and returns the scores, best first,
// with p-values Bonferroni-corrected for the number of tenants tested.
func DetectAll(keys []*Key, tokens []int) []Score {
	out := make([]Score, 0, len(keys))
	for _, k := range keys {
		s := k.Detect(tokens)
		s.P = math.Min(1, s.P*float64(len(keys)))
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].P < out[j].P })
	return out
}

// Window finds the most watermarked span of width w tokens (a watermarked passage inside a
// long mixed document); the p-value is corrected for the number of windows tried.
func (k *Key) Window(tokens []int, w int) (start int, s Score) {
	return bestWindow(tokens, w, k.Detect, func(s *Score) *float64 { return &s.P })
}

// bestWindow scores windows of w tokens every w/4 and returns the start and score of the
// one with the smallest p-value, corrected (Bonferroni) for the number of windows tried.
func bestWindow[S any](tokens []int, w int, detect func([]int) S, p func(*S) *float64) (int, S) {
	if len(tokens) <= w {
		return 0, detect(tokens)
	}
	var best S
	start, tries := 0, 0
	*p(&best) = 2
	for i := 0; i+w <= len(tokens); i += max(1, w/4) {
		tries++
		if sc := detect(tokens[i : i+w]); *p(&sc) < *p(&best) {
			start, best = i, sc
		}
	}
	*p(&best) = math.Min(1, *p(&best)*float64(tries))
	return start, best
}
