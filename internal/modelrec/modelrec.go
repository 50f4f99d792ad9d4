// Package modelrec is the one record of a model version's attributes — classification,
// owner, allowed and denied countries, watermarking and hardening — as the inventory
// keeps it (store.Version.Attrs) and as every reader sees it: the gateway, for serving,
// and custody, for releasing weights. A gateway route only says where a model is served;
// what may be done with it is here.
//
// A Table is an in-memory snapshot of every record, swapped whole when the inventory
// changes (app.watchModels polls the store), so that request handling reads it without
// locks or store round trips, and a `strongroom model set` reaches every replica within
// the poll interval.
//
// Model references: "NAME:VERSION" names one version; "NAME" resolves to the newest
// enabled version of NAME (by import time).
package modelrec

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Attrs are a model version's attributes. The zero Hardening (nil) means DefaultHardening.
type Attrs struct {
	// Classification: free text such as "public", "restricted", "export-controlled:4E091";
	// it selects Cedar policy and the number of approvals custody requires.
	Classification string `json:"classification"`
	// Owner is the owning team or person.
	Owner string `json:"owner,omitempty"`
	// AllowedCountries, if non-empty, is the only places (ISO 3166-1 alpha-2) the model may
	// be used from or run in; DeniedCountries are refused always.
	AllowedCountries []string `json:"allowed_countries,omitempty"`
	DeniedCountries  []string `json:"denied_countries,omitempty"`
	// Watermark asks the engine to watermark outputs with the caller's tenant key.
	Watermark bool       `json:"watermark,omitempty"`
	Hardening *Hardening `json:"hardening,omitempty"`
}

// Hardening caps the request features used for logit-based extraction (Carlini et al. 2024,
// "Stealing Part of a Production Language Model"; Finlayson et al. 2024): logit_bias,
// logprobs and top_logprobs, n and max_tokens.
type Hardening struct {
	// LogitBias: "reject" (400), "strip" (removed, said in a response header) or "allow".
	LogitBias string `json:"logit_bias"`
	// MaxTopLogprobs caps top_logprobs; -1 forbids logprobs altogether (stripped).
	MaxTopLogprobs int `json:"max_top_logprobs"`
	MaxN           int `json:"max_n"`
	MaxTokens      int `json:"max_tokens"`
	// RoundLogprobs rounds returned logprobs to this many decimals (0: off).
	RoundLogprobs int `json:"round_logprobs,omitempty"`
	// LogprobNoise adds Gaussian noise of this standard deviation (nats) to returned
	// logprobs, the same for a repeated query so that averaging does not remove it (0: off).
	LogprobNoise float64 `json:"logprob_noise,omitempty"`
}

// DefaultHardening is what applies when a record sets none.
func DefaultHardening() Hardening {
	return Hardening{LogitBias: "strip", MaxTopLogprobs: 5, MaxN: 4, MaxTokens: 4096}
}

// EffectiveHardening is the record's hardening, or the default.
func (a Attrs) EffectiveHardening() Hardening {
	if a.Hardening == nil {
		return DefaultHardening()
	}
	return *a.Hardening
}

// Validate checks a record before it is stored: a classification, country codes that are
// two upper-case letters, no country both allowed and denied, a known logit_bias rule and
// caps that are not negative (but for MaxTopLogprobs -1).
func (a Attrs) Validate() error {
	if strings.TrimSpace(a.Classification) == "" {
		return errors.New("a classification is required")
	}
	for _, list := range [][]string{a.AllowedCountries, a.DeniedCountries} {
		for _, c := range list {
			if !isCountry(c) {
				return fmt.Errorf("country %q is not an ISO 3166-1 alpha-2 code (two upper-case letters)", c)
			}
		}
	}
	for _, c := range a.AllowedCountries {
		if slices.Contains(a.DeniedCountries, c) {
			return fmt.Errorf("country %s is both allowed and denied", c)
		}
	}
	if h := a.Hardening; h != nil {
		switch h.LogitBias {
		case "reject", "strip", "allow":
		default:
			return fmt.Errorf("hardening logit_bias %q: want reject, strip or allow", h.LogitBias)
		}
		if h.MaxTopLogprobs < -1 || h.MaxN < 0 || h.MaxTokens < 0 || h.RoundLogprobs < 0 || h.LogprobNoise < 0 || math.IsNaN(h.LogprobNoise) {
			return errors.New("hardening caps must not be negative (max_top_logprobs -1 forbids logprobs)")
		}
	}
	return nil
}

func isCountry(c string) bool {
	return len(c) == 2 && c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' && c[1] <= 'Z'
}

// Record is one model version and its attributes.
type Record struct {
	Name     string
	Version  string
	Attrs    Attrs
	Created  time.Time
	Disabled bool // no new leases, not served
}

// Ref is the record's "NAME:VERSION".
func (r Record) Ref() string { return r.Name + ":" + r.Version }

// SplitRef splits "NAME:VERSION" (version "" when there is no colon).
func SplitRef(ref string) (name, version string) {
	name, version, _ = strings.Cut(ref, ":")
	return name, version
}

// Resolver finds the record a model reference names.
type Resolver interface {
	Resolve(ref string) (Record, bool)
}

// Table is a Resolver over a snapshot that Set replaces whole.
type Table struct {
	snap atomic.Pointer[snapshot]
}

type snapshot struct {
	exact  map[string]*Record // "NAME:VERSION"
	newest map[string]*Record // "NAME": newest enabled version
}

// NewTable returns a table holding recs.
func NewTable(recs ...Record) *Table {
	t := &Table{}
	t.Set(recs)
	return t
}

// Set replaces the snapshot.
func (t *Table) Set(recs []Record) {
	s := &snapshot{exact: make(map[string]*Record, len(recs)), newest: map[string]*Record{}}
	for i := range recs {
		r := &recs[i]
		s.exact[r.Ref()] = r
		if r.Disabled {
			continue
		}
		if cur := s.newest[r.Name]; cur == nil || r.Created.After(cur.Created) || (r.Created.Equal(cur.Created) && r.Version > cur.Version) {
			s.newest[r.Name] = r
		}
	}
	t.snap.Store(s)
}

// Resolve returns the record ref names: an exact "NAME:VERSION" (disabled or not: the
// caller decides what a disabled version means), else the newest enabled version of NAME.
func (t *Table) Resolve(ref string) (Record, bool) {
	s := t.snap.Load()
	if s == nil {
		return Record{}, false
	}
	if strings.Contains(ref, ":") {
		if r := s.exact[ref]; r != nil {
			return *r, true
		}
		return Record{}, false
	}
	if r := s.newest[ref]; r != nil {
		return *r, true
	}
	return Record{}, false
}
