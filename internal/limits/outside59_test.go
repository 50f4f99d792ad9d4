package limits

// Outside round 59: an attacker who can read and write the Redis the replicas share (a
// stolen Redis password, a neighbour on a shared instance, a malicious Redis operator) and
// holds nothing of Strongroom's. While the attacker has access, the limits' state is theirs
// to reset or fill (a limit in Redis is only as good as Redis); what these tests check is
// what ONE write does once the access is gone (the password rotated, the neighbour evicted):
// the limiter must come back to the configured limits on its own, within a bound, instead of
// keeping the attacker's state for as long as the scope is used — and what Redis's contents
// cost a replica's memory.
//
// The scopes are the gateway's (gateway.infer): key:ID, tenant:T, model:M; the limiter is
// production's (NewRedis with no clock: Redis's TIME).

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// o59Scopes is what gateway.infer asks of the limiter for one request.
func o59Scopes(key Limits) []Scope {
	return []Scope{
		{Name: "key:o59key", Limits: key},
		{Name: "tenant:o59tenant"},
		{Name: "model:o59restricted"},
	}
}

// o59RedisClock is Redis's clock in ms (what admit.lua compares with).
func o59RedisClock(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	tm, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return tm.UnixMilli()
}

// Attack: a key's daily budget (daily_tokens 1,000) is used up; the attacker writes the
// key's hash once — day "9999-12-31", dt −10^12 — and has no access after that.
// Rule: one write is at most one reset: afterwards the key gets at most another day's budget
// (2,000 tokens in all today), and a later day starts from the configured budget.
// What it shows (FAIL): every later request is admitted (20,000 tokens on a budget of 1,000
// in the test, without end), and the forged day stays in the hash — admit.lua keeps a
// scope's stored day when it is later than Redis's ("a scope's day never goes back") and
// takes dt as stored, so the budget never resets and never runs out for as long as the key
// is used (each admission renews the hash's two-day expiry). Production passes no clock:
// a stored day later than Redis's own can only have been written by hand.
func TestOutside59ForgedDayOutlivesAccess(t *testing.T) {
	c := redisClient(t)
	prefix := uniquePrefix()
	r := NewRedis(c, prefix, nil)
	sc := o59Scopes(Limits{DailyTokens: 1000})
	ctx := context.Background()
	admitted := 0
	for range 2 {
		done, d := admit(t, r, sc, 500)
		if d != nil {
			t.Fatalf("premise: refused within the budget: %+v", d)
		}
		done(500)
		admitted += 500
	}
	if _, d := admit(t, r, sc, 500); d == nil || d.What != "daily_tokens" {
		t.Fatalf("premise: the used-up budget admitted: %+v", d)
	}
	// The attacker's one write.
	if err := c.HSet(ctx, prefix+"key:o59key", "day", "9999-12-31", "dt", "-1000000000000").Err(); err != nil {
		t.Fatal(err)
	}
	for range 40 {
		done, d := admit(t, r, sc, 500)
		if d != nil {
			break
		}
		done(500)
		admitted += 500
	}
	day, _ := c.HGet(ctx, prefix+"key:o59key", "day").Result()
	if admitted > 2000 {
		t.Errorf("after one forged write, the key was admitted %d tokens today against daily_tokens 1000 (at most 2000: one reset); the hash still names day %q, so no later day resets it", admitted, day)
	}
}

// Attack: a key limited to one request at once; the attacker writes once into the key's
// hash a slot of a made-up replica, m:evil:1, whose lapse e:evil is in the year 5138.
// Rule: a slot no live replica renews lapses within SlotTTL (DESIGN: "a replica killed
// holding slots gives them back within 15 s"); a lapse time further ahead than any replica
// writes (Redis's clock + the TTL) is not a live replica's.
// What it shows (FAIL): the key is refused "concurrent" for good — admit.lua's held() counts
// every m: field whose e: is not before Redis's clock, whatever it says — until the hash
// expires two days after its last admission (and a refused admission does not renew it).
func TestOutside59ForgedSlotNeverLapses(t *testing.T) {
	c, prefix, r, sc := o59Used(t, Limits{Concurrent: 1}, 300*time.Millisecond)
	if err := c.HSet(context.Background(), prefix+"key:o59key", "m:evil:1", 1, "e:evil", "99999999999999").Err(); err != nil {
		t.Fatal(err)
	}
	if d := o59AdmittedWithin(t, r, sc, 10*r.SlotTTL); d != nil {
		t.Fatalf("a forged slot (lapse in the year 5138) still refuses the key %v after it was written, %d× SlotTTL: %+v", 10*r.SlotTTL, 10, d)
	}
}

// Attack: a key limited to 600 requests a minute (one every 100 ms); the attacker writes
// once its request bucket: no tokens, last refilled ten years from now.
// Rule: a bucket refills at its rate; a last time ahead of Redis's own clock is not any
// replica's (production stamps buckets with Redis's TIME).
// What it shows (FAIL): the key is refused "rpm" for good — bucket() refills nothing while
// the stored last time is ahead of now, and the admission never moves it back ("a
// bucket's last time never moves back") — until the hash expires two days after the last
// admission. The same write on a model's scope refuses every caller of the model.
func TestOutside59ForgedBucketTimeLocksOut(t *testing.T) {
	c, prefix, r, sc := o59Used(t, Limits{RPM: 600}, 0)
	future := o59RedisClock(t, c) + 10*365*86400*1000
	if err := c.HSet(context.Background(), prefix+"key:o59key", "rt", 0, "rl", future).Err(); err != nil {
		t.Fatal(err)
	}
	if d := o59AdmittedWithin(t, r, sc, 3*time.Second); d != nil { // 30 refills' time
		t.Fatalf("a key of rpm 600 is still refused 3 s after one forged write of its bucket's last time: %+v (retry after %v)", d, d.RetryAfter)
	}
}

// o59Used is a limiter on a prefix of its own (slot ttl, if not 0) whose scopes with key's
// limits were used once, as a replica would have written them.
func o59Used(t *testing.T, key Limits, ttl time.Duration) (*redis.Client, string, *Redis, []Scope) {
	t.Helper()
	c := redisClient(t)
	prefix := uniquePrefix()
	r := NewRedis(c, prefix, nil)
	if ttl > 0 {
		r.SlotTTL = ttl
	}
	sc := o59Scopes(key)
	done, d := admit(t, r, sc, 10)
	if d != nil {
		t.Fatalf("premise: %+v", d)
	}
	done(10)
	return c, prefix, r, sc
}

// o59AdmittedWithin asks for admissions until one is admitted (nil) or within has passed
// (the last refusal).
func o59AdmittedWithin(t *testing.T, r *Redis, sc []Scope, within time.Duration) *Denied {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		done, d := admit(t, r, sc, 10)
		if d == nil {
			done(10)
			return nil
		}
		if time.Now().After(deadline) {
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Attack: the attacker writes into a scope's hash a "day" of 16 MiB ("9" and 16 Mi "9"s:
// later, as a string, than any real day).
// Rule: what an admission costs a replica does not depend on what Redis holds: its answer
// is a verdict and a day.
// What it shows (FAIL): admit.lua returns the stored day whole (it is "later" than
// Redis's), so every admission reads 16 MiB from Redis, keeps it in its release until the
// request ends and sends it back to Redis in done.lua: a replica with N requests in flight
// holds N copies (the write's size is bounded only by Redis's 512 MB proto-max-bulk-len).
func TestOutside59HugeDayCopiedPerAdmission(t *testing.T) {
	c, prefix, r, sc := o59Used(t, Limits{RPM: 1000}, 0)
	const size = 16 << 20
	if err := c.HSet(context.Background(), prefix+"model:o59restricted", "day", strings.Repeat("9", size)).Err(); err != nil {
		t.Fatal(err)
	}
	defer c.Del(context.Background(), prefix+"model:o59restricted")
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	const inflight = 4
	var dones []func(int)
	for range inflight {
		done, d := admit(t, r, sc, 10)
		if d != nil {
			t.Fatalf("premise: %+v", d)
		}
		dones = append(dones, done)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	for _, done := range dones {
		done(10)
	}
	held := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
	if held > 1<<20 {
		t.Errorf("%d admissions in flight hold %s of heap after one forged write of a %d MiB day into the model's scope (%s allocated in all)",
			inflight, o59MiB(held), size>>20, o59MiB(int64(m1.TotalAlloc-m0.TotalAlloc)))
	}
}

func o59MiB(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB" }

// Attack: a scope's hash replaced by values of the wrong kind — a string key, a list, fields
// that are not numbers, a bucket at −10^300.
// Rule: the limiter answers an error or a verdict, never panics; a Retry-After it gives is
// within a day (no limit needs longer) and not negative.
// Held unless it fails: the error goes to the gateway, which refuses a restricted model 503
// (or falls back locally for a public one: DESIGN, "Redis down").
func TestOutside59WrongKindsInScope(t *testing.T) {
	c := redisClient(t)
	ctx := context.Background()
	for name, forge := range map[string]func(key string) error{
		"string": func(k string) error { return c.Set(ctx, k, "x", 0).Err() },
		"list":   func(k string) error { return c.RPush(ctx, k, "a", "b").Err() },
		"not numbers": func(k string) error {
			return c.HSet(ctx, k, "rt", "abc", "rl", "nan", "tt", "inf", "tl", "-", "dt", "x").Err()
		},
		"deep bucket": func(k string) error { return c.HSet(ctx, k, "tt", "-1e300", "rt", "-1e300").Err() },
		"slots junk":  func(k string) error { return c.HSet(ctx, k, "m:", 1, "m:x", 1, "e:", "a", "e:x", "1e999").Err() },
	} {
		t.Run(name, func(t *testing.T) {
			prefix := uniquePrefix()
			r := NewRedis(c, prefix, nil)
			sc := o59Scopes(Limits{RPM: 60, TPM: 1000, Concurrent: 2, DailyTokens: 100000})
			if err := forge(prefix + "key:o59key"); err != nil {
				t.Fatal(err)
			}
			defer c.Del(ctx, prefix+"key:o59key")
			done, d, err := r.Admit(ctx, sc, 10)
			switch {
			case err != nil:
				t.Logf("error (the gateway refuses or falls back): %v", err)
			case d != nil:
				if d.RetryAfter < 0 || d.RetryAfter > 24*time.Hour {
					t.Errorf("refused %s with Retry-After %v", d.What, d.RetryAfter)
				}
				t.Logf("refused: %+v", d)
			default:
				done(10)
			}
		})
	}
}

// Attack: the attacker pauses Redis (CLIENT PAUSE 20000 ALL: every client's commands wait,
// the connections stay open) — on a private redis-server, as the shared one serves other
// tests. The replica's client is production's (redis.ParseURL of gateway.redis_url, as
// app.Redis makes it) and the request's context has no deadline (the gateway passes the
// client's r.Context()).
// Rule (DESIGN, "Gateway": "Redis down: local fallback for public models only, 503 for the
// rest"): an admission Redis does not answer ends in an error, so that the request is
// refused (or falls back), rather than waiting for as long as Redis is held.
// Held unless it fails (bound: 20 s); the time it took is logged (10 s in round 59: go-redis's
// 3 s read timeout, tried again on a timeout; each request waited that long before its 503;
// since the forty-fifth session the limiter's 2 s deadline reaches the socket: ~2 s).
func TestOutside59PausedRedisAdmission(t *testing.T) {
	addr, _ := privateRedis(t, freePort(t))
	opt, err := redis.ParseURL("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true // as serve's client (app.Redis)
	replica := redis.NewClient(opt)
	defer replica.Close()
	attacker := redis.NewClient(&redis.Options{Addr: addr})
	defer attacker.Close()
	r := NewRedis(replica, uniquePrefix(), nil)
	sc := o59Scopes(Limits{RPM: 100, Concurrent: 2})
	done, d := admit(t, r, sc, 10)
	if d != nil {
		t.Fatalf("premise: %+v", d)
	}
	done(10)
	if err := attacker.Do(context.Background(), "CLIENT", "PAUSE", "20000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	// (No UNPAUSE: the attacker's own connection is paused too; the server ends with the test.)
	start := time.Now()
	res := make(chan error, 1)
	go func() {
		_, _, err := r.Admit(context.Background(), sc, 10)
		res <- err
	}()
	select {
	case err := <-res:
		took := time.Since(start)
		if err == nil {
			t.Fatalf("admitted by a paused Redis after %v", took)
		}
		t.Logf("a paused Redis: the admission failed after %v: %v", took.Round(time.Millisecond), err)
	case <-time.After(20 * time.Second):
		t.Fatalf("an admission waited 20 s on a paused Redis (the request with it)")
	}
}

// Attack: one or two writes — scopes in Redis turned into strings (SET, no expiry).
//   - (a) a key's scope no request of the replica holds a slot in: a request with that key
//     fails (WRONGTYPE) and the replica keeps its release for the next heartbeat;
//   - (b) a key's and a public model's scopes, in which the replica holds slots for a long
//     request.
//
// Meanwhile the same replica serves a long request of a restricted model whose one
// concurrency slot it holds.
// Rule (DESIGN, "Shared limits and a replica that dies"): "a live replica's slot is held
// however long its request lasts"; another replica asking for the restricted model is
// refused. (The public model's requests follow the documented fallback.)
// What it shows: (a) HELD — the heartbeat writes the held scopes before it frees the
// others, so the failing HDEL on the string comes last. (b) FAIL: beat.lua renews every
// scope in one script, in Go's map order, and the HSET on a string aborts it: the scopes
// after it are not renewed, so within a few beats the restricted model's slot lapses and
// another replica is admitted to the restricted model past its concurrency limit (in 0.6–
// 3.5 s here) — for as long as the strings are there (nothing removes them) and the
// holder's request runs. Run ignores beat's error: nothing is logged or counted.
// Since the forty-fifth session the test makes the beats itself and checks each (it had run
// Run with a 300 ms SlotTTL for 8 s, which a slow machine could fail): with the old
// beat.lua (b) fails at the first beat that meets a string, (a) passes.
func TestOutside59WrongTypePoisonsHeartbeat(t *testing.T) {
	for _, tc := range []struct {
		name     string
		poisoned []string // the scopes made strings
		holdIt   bool     // the holder holds slots in them when they are written
	}{{"a key's scope, not held", []string{"key:pub"}, false}, {"a public model's scopes, held", []string{"key:pub", "model:public"}, true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := redisClient(t)
			prefix := uniquePrefix()
			ctx := context.Background()
			// The heartbeats are the test's own calls (no Run, a minute's SlotTTL): each is
			// checked to have renewed the restricted slot, whatever the machine's speed. The
			// scopes go in Go's map order, so ten beats put the strings before the restricted
			// scope in most of them (the script that stopped at a string did so in 0.6–3.5 s of
			// beats every 100 ms).
			holder := NewRedis(c, prefix, nil)
			holder.SlotTTL = time.Minute
			other := NewRedis(redisClient(t), prefix, nil)
			other.SlotTTL = holder.SlotTTL // a fleet's replicas share it (a lapse over twice it is lapsed)
			restricted := []Scope{{Name: "key:victim"}, {Name: "tenant:acme"}, {Name: "model:restricted", Limits: Limits{Concurrent: 1}}}
			done, d := admit(t, holder, restricted, 10)
			if d != nil {
				t.Fatalf("premise: %+v", d)
			}
			defer done(10)
			public := []Scope{{Name: "key:pub", Limits: Limits{Concurrent: 1}}, {Name: "tenant:globex"}, {Name: "model:public", Limits: Limits{Concurrent: 8}}}
			if tc.holdIt {
				done, d := admit(t, holder, public, 10)
				if d != nil {
					t.Fatalf("premise: %+v", d)
				}
				defer done(10)
			}
			another := []Scope{{Name: "key:other"}, {Name: "tenant:acme"}, {Name: "model:restricted", Limits: Limits{Concurrent: 1}}}
			if _, d := admit(t, other, another, 10); d == nil {
				t.Fatal("premise: another replica was admitted before any attack")
			}
			for _, k := range tc.poisoned {
				if err := c.Set(ctx, prefix+k, "x", 0).Err(); err != nil {
					t.Fatal(err)
				}
				defer c.Del(context.Background(), prefix+k)
			}
			if !tc.holdIt {
				if _, _, err := holder.Admit(ctx, public, 10); err == nil {
					t.Fatal("premise: an admission on a string scope succeeded")
				}
			}
			slot := "e:" + holder.id
			lapse := func() int64 {
				v, err := c.HGet(ctx, prefix+"model:restricted", slot).Int64()
				if err != nil {
					t.Fatalf("the restricted scope's slot of the holder: %v", err)
				}
				return v
			}
			for i := range 10 {
				before := lapse()
				// Redis's clock past the last renewal's millisecond, so that a renewal shows.
				for {
					now, err := c.Time(ctx).Result()
					if err != nil {
						t.Fatal(err)
					}
					if now.UnixMilli()+holder.SlotTTL.Milliseconds() > before {
						break
					}
					runtime.Gosched()
				}
				// Each beat touches the strings (b); in (a) only the first, with the kept
				// release (whether it is kept again after that is not the rule here).
				if err := holder.beat(ctx); !errors.Is(err, errNotHashes) && (err != nil || i == 0 || tc.holdIt) {
					t.Fatalf("beat %d with %s strings: %v, want %v", i, strings.Join(tc.poisoned, " and "), err, errNotHashes)
				}
				if after := lapse(); after <= before {
					t.Fatalf("beat %d did not renew the restricted model's slot (lapse %d, before it %d) with %s strings in Redis: the heartbeat stopped at them",
						i, after, before, strings.Join(tc.poisoned, " and "))
				}
			}
			if _, d := admit(t, other, another, 10); d == nil {
				t.Fatal("another replica was admitted to the restricted model (concurrent 1) while the holder's request on it still runs")
			}
		})
	}
}
