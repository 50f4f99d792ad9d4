// Package limits enforces request rates, token rates, concurrency and daily token budgets
// per API key, tenant and model.
package limits

import (
	"context"
	"math"
	"sync"
	"time"
)

// Limits for one scope; zero means unlimited.
type Limits struct {
	RPM         int   `json:"rpm,omitempty"`
	TPM         int   `json:"tpm,omitempty"`
	Concurrent  int   `json:"concurrent,omitempty"`
	DailyTokens int64 `json:"daily_tokens,omitempty"`
}

// Scope is one thing limited: "key:ID", "tenant:T" or "model:M", with its limits.
type Scope struct {
	Name   string
	Limits Limits
}

// Denied says which scope refused and when to retry.
type Denied struct {
	Scope      string
	What       string // "rpm", "tpm", "concurrent", "daily_tokens"
	RetryAfter time.Duration
}

// Limiter admits requests. Admit charges a request and its estimated tokens to every scope;
// the returned done reports the actual tokens (refunding or charging the difference) and
// frees the concurrency slot. A nil *Denied means admitted.
type Limiter interface {
	Admit(ctx context.Context, scopes []Scope, estTokens int) (done func(actualTokens int), denied *Denied, err error)
}

// Local is an in-memory Limiter for one process.
type Local struct {
	now func() time.Time
	mu  sync.Mutex
	st  map[string]*scopeState
}

type bucket struct {
	tokens float64
	last   time.Time
}

type scopeState struct {
	req, tok   bucket
	inflight   int
	day        int // the UTC day of dayTokens, yyyymmdd
	dayTokens  int64
	lastActive time.Time
}

// NewLocal returns an in-memory limiter; now may be nil.
func NewLocal(now func() time.Time) *Local {
	if now == nil {
		now = time.Now
	}
	return &Local{now: now, st: map[string]*scopeState{}}
}

// refill brings a bucket of capacity perMin up to now and reports whether cost fits, and if
// not, how long until it does.
func refill(b *bucket, perMin int, now time.Time, cost float64) (bool, time.Duration) {
	capacity := float64(perMin)
	if b.last.IsZero() {
		b.tokens, b.last = capacity, now
	}
	b.tokens = math.Min(capacity, b.tokens+now.Sub(b.last).Minutes()*capacity)
	b.last = now
	if b.tokens >= cost {
		return true, 0
	}
	need := math.Min(cost, capacity) - b.tokens
	return false, time.Duration(need / capacity * float64(time.Minute))
}

// Admit implements Limiter.
func (l *Local) Admit(_ context.Context, scopes []Scope, est int) (func(int), *Denied, error) {
	now := l.now()
	y, m, d := now.UTC().Date()
	day := y*10000 + int(m)*100 + d
	l.mu.Lock()
	defer l.mu.Unlock()
	a := &admission{l: l, scopes: scopes, est: est, day: day}
	if len(scopes) <= len(a.inline) {
		a.states = a.inline[:len(scopes)]
	} else {
		a.states = make([]*scopeState, len(scopes))
	}
	states := a.states
	for i, sc := range scopes {
		s := l.st[sc.Name]
		if s == nil {
			s = &scopeState{}
			l.st[sc.Name] = s
		}
		if s.day != day {
			s.day, s.dayTokens = day, 0
		}
		states[i] = s
		lim := sc.Limits
		if lim.Concurrent > 0 && s.inflight >= lim.Concurrent {
			return nil, &Denied{Scope: sc.Name, What: "concurrent", RetryAfter: time.Second}, nil
		}
		if lim.DailyTokens > 0 && s.dayTokens+int64(est) > lim.DailyTokens {
			midnight := now.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
			return nil, &Denied{Scope: sc.Name, What: "daily_tokens", RetryAfter: midnight.Sub(now)}, nil
		}
		if lim.RPM > 0 {
			if ok, wait := refill(&s.req, lim.RPM, now, 1); !ok {
				return nil, &Denied{Scope: sc.Name, What: "rpm", RetryAfter: wait}, nil
			}
		}
		if lim.TPM > 0 {
			if ok, wait := refill(&s.tok, lim.TPM, now, float64(est)); !ok {
				return nil, &Denied{Scope: sc.Name, What: "tpm", RetryAfter: wait}, nil
			}
		}
	}
	// Every scope admits: charge them all.
	for i, sc := range scopes {
		s, lim := states[i], sc.Limits
		s.inflight++
		s.dayTokens += int64(est)
		s.lastActive = now
		if lim.RPM > 0 {
			s.req.tokens--
		}
		if lim.TPM > 0 {
			s.tok.tokens -= float64(est)
		}
	}
	return a.release, nil, nil
}

// admission is what Admit charged: one allocation a request (its scopes' states inline
// for up to four), released once.
type admission struct {
	l      *Local
	scopes []Scope
	est    int
	day    int // the UTC day charged (yyyymmdd)
	states []*scopeState
	inline [4]*scopeState
	once   sync.Once
}

// release settles the admission with the request's actual tokens; later calls do nothing.
func (a *admission) release(actual int) {
	a.once.Do(func() {
		a.l.mu.Lock()
		defer a.l.mu.Unlock()
		diff := actual - a.est
		for i, sc := range a.scopes {
			s := a.states[i]
			s.inflight--
			if s.day == a.day { // a day since begun owes nothing to this one's estimate
				s.dayTokens += int64(diff)
			}
			if sc.Limits.TPM > 0 {
				s.tok.tokens -= float64(diff)
			}
		}
	})
}
