package limits

import (
	"context"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// newLimiter makes a fresh limiter of one backend on a clock.
type newLimiter func(t *testing.T, now func() time.Time) Limiter

// conformance runs the behaviour every Limiter backend must have.
func conformance(t *testing.T, mk newLimiter) {
	t.Run("RPM", func(t *testing.T) { testRPM(t, mk) })
	t.Run("TPMRefundAndBudget", func(t *testing.T) { testTPMRefundAndBudget(t, mk) })
	t.Run("ConcurrentAndAllScopes", func(t *testing.T) { testConcurrentAndAllScopes(t, mk) })
}

// admit is Admit for the suite: an error fails the test (a backend that cannot answer must
// not pass, nor crash the suite on a nil done).
func admit(t *testing.T, l Limiter, sc []Scope, tokens int) (func(int), *Denied) {
	t.Helper()
	done, d, err := l.Admit(context.Background(), sc, tokens)
	if err != nil {
		t.Fatalf("Admit: %v", err)
	}
	return done, d
}

func TestLocal(t *testing.T) {
	conformance(t, func(t *testing.T, now func() time.Time) Limiter { return NewLocal(now) })
}

func testRPM(t *testing.T, mk newLimiter) {
	c := &clock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	l := mk(t, c.now)
	sc := []Scope{{Name: "key:a", Limits: Limits{RPM: 3}}}
	for i := range 3 {
		done, d := admit(t, l, sc, 1)
		if d != nil {
			t.Fatalf("request %d denied: %+v", i, d)
		}
		done(1)
	}
	_, d := admit(t, l, sc, 1)
	if d == nil || d.What != "rpm" || d.RetryAfter <= 0 || d.RetryAfter > 21*time.Second {
		t.Fatalf("4th request: %+v", d)
	}
	c.t = c.t.Add(20 * time.Second)
	if _, d := admit(t, l, sc, 1); d != nil {
		t.Fatalf("after refill: %+v", d)
	}
	// Another key is not affected.
	if _, d := admit(t, l, []Scope{{Name: "key:b", Limits: Limits{RPM: 3}}}, 1); d != nil {
		t.Fatal("other key limited")
	}
}

func testTPMRefundAndBudget(t *testing.T, mk newLimiter) {
	c := &clock{t: time.Date(2026, 11, 27, 23, 0, 0, 0, time.UTC)}
	l := mk(t, c.now)
	sc := []Scope{{Name: "tenant:t", Limits: Limits{TPM: 1000, DailyTokens: 1500}}}
	done, d := admit(t, l, sc, 900)
	if d != nil {
		t.Fatal(d)
	}
	done(100)  // used far less than estimated: refunded
	done(5000) // second call is ignored
	if _, d := admit(t, l, sc, 800); d != nil {
		t.Fatalf("after refund: %+v", d)
	}
	// 100 + 800 used of 1500 today; 700 more does not fit the budget.
	c.t = c.t.Add(2 * time.Minute)
	_, d = admit(t, l, sc, 700)
	if d == nil || d.What != "daily_tokens" || d.RetryAfter != 58*time.Minute {
		t.Fatalf("budget: %+v", d)
	}
	c.t = c.t.Add(time.Hour) // next day
	if _, d := admit(t, l, sc, 700); d != nil {
		t.Fatalf("new day: %+v", d)
	}
}

func testConcurrentAndAllScopes(t *testing.T, mk newLimiter) {
	l := mk(t, nil)
	sc := []Scope{{Name: "key:a", Limits: Limits{Concurrent: 1}}, {Name: "model:m", Limits: Limits{RPM: 100}}}
	done, d := admit(t, l, sc, 1)
	if d != nil {
		t.Fatal(d)
	}
	if _, d := admit(t, l, sc, 1); d == nil || d.What != "concurrent" || d.Scope != "key:a" {
		t.Fatalf("second concurrent: %+v", d)
	}
	done(1)
	if _, d := admit(t, l, sc, 1); d != nil {
		t.Fatalf("after release: %+v", d)
	}
	// A request denied by one scope charges none.
	l2 := mk(t, nil)
	sc2 := []Scope{{Name: "model:m", Limits: Limits{RPM: 1}}, {Name: "key:z", Limits: Limits{RPM: 1, Concurrent: 1}}}
	admit(t, l2, sc2[1:], 0)
	if _, d := admit(t, l2, sc2, 0); d == nil {
		t.Fatal("admitted past key limit")
	}
	if _, d := admit(t, l2, sc2[:1], 0); d != nil {
		t.Fatalf("model scope charged by a denied request: %+v", d)
	}
}
