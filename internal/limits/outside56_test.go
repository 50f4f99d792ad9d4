package limits

// Outside round 56: getting past, or abusing, the usage limits in a fleet (several gateway
// replicas sharing one Redis). These tests attack internal/limits directly, with the real
// Redis of scripts/test (STRONGROOM_TEST_REDIS) and, for the fault tests, a private
// redis-server the test starts and stops itself.

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Attack: two replicas whose clocks straddle midnight UTC by two seconds (one still on day
// D, the other already on D+1) take turns admitting one key's requests, each for the whole
// daily budget. admit.lua keeps one "day" field per scope and zeroes "dt" whenever the
// replica's day differs from the stored one — in either direction — so every turn from one
// replica to the other starts a fresh budget.
// Rule: daily_tokens is a budget per UTC day held globally across replicas: whatever days
// the replicas' clocks name, at most one budget for D and one for D+1 (2 × daily) is
// admitted in total.
// What it shows (FAIL): 10 alternating requests of 100 tokens each were all admitted
// against daily_tokens 100 (1000 tokens admitted; at most 200 allowed), and it goes on for as
// long as the skew window lasts (admit.lua: `if h[5] ~= day then dt = 0 end`).
// Fixed since: the limiter takes its time and day from Redis's clock (TIME), the same for
// every replica; with a test's clocks as here, a scope's day never goes back (admit.lua).
func TestOutside56DailyBudgetSkewedReplicasAtMidnight(t *testing.T) {
	c := redisClient(t)
	prefix := uniquePrefix()
	// Replica A's clock is 2 s behind replica B's; real time is just past midnight.
	b := time.Date(2026, 3, 2, 0, 0, 1, 0, time.UTC)
	a := b.Add(-2 * time.Second) // 2026-03-01 23:59:59
	ra := NewRedis(c, prefix, func() time.Time { return a })
	rb := NewRedis(redisClient(t), prefix, func() time.Time { return b })
	sc := []Scope{{Name: "key:skew", Limits: Limits{DailyTokens: 100}}}
	admitted := 0
	for i := range 10 {
		r := ra
		if i%2 == 1 {
			r = rb
		}
		done, d := admit(t, r, sc, 100)
		if d == nil {
			admitted += 100
			done(100)
		}
	}
	if admitted > 200 {
		t.Fatalf("two replicas with clocks 2 s apart across midnight admitted %d tokens in turns against daily_tokens 100 (at most 200: one budget for each day)", admitted)
	}
}

// Attack (a fault): replica A's clock runs 2 minutes ahead of replica B's (NTP lost on one
// host). One request of a key goes through A; the key's next request, well within its rpm,
// goes through B. admit.lua refills the shared bucket by the replica's clock (ARGV now_ms)
// from the last writer's stamp, so B's refill is negative: −2 minutes' worth.
// Rule: a request within the limit is admitted whichever replica serves it (the slot
// lapses already use Redis's own TIME "not the replicas' clocks"); a replica's clock must
// not take a scope's rate away from the fleet.
// What it shows (FAIL): with rpm 60 and 59 requests left in the bucket, B refused the
// key's second request ("rpm", Retry-After ≈ 1m1s), and every later one while A keeps
// stamping the bucket; the same with a clock hours behind locks the scope (a model's, every
// tenant's) out of that replica for hours. At fault: admit.lua's bucket() uses ARGV now
// (the replica's clock, Redis.Admit's r.now()) although the script reads Redis TIME itself.
// Fixed since: Redis's clock for every replica; a bucket's last time ahead of now refills
// nothing and is not moved back (admit.lua's bucket).
func TestOutside56SkewedReplicaLockedOutOfRate(t *testing.T) {
	prefix := uniquePrefix()
	wall := time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)
	ahead := NewRedis(redisClient(t), prefix, func() time.Time { return wall.Add(2 * time.Minute) })
	behind := NewRedis(redisClient(t), prefix, func() time.Time { return wall })
	sc := []Scope{{Name: "key:skewed", Limits: Limits{RPM: 60}}}
	done, d := admit(t, ahead, sc, 1)
	if d != nil {
		t.Fatalf("premise: %+v", d)
	}
	done(1)
	if done, d := admit(t, behind, sc, 1); d != nil {
		t.Fatalf("the key's second request of 60 a minute, on the replica whose clock is 2 min behind the other's, was refused: %+v", d)
	} else {
		done(1)
	}
}

// Attack: requests admitted just before midnight UTC on an estimate of the whole daily
// budget (a large max_tokens), held open past midnight, then ended with little or no usage
// (the client goes away: the gateway reports 0). A request admitted after midnight starts
// the new day first; then the old requests' refunds land in the new day.
// Rule: the daily budget is per UTC day: a refund of yesterday's estimate must not raise
// today's budget (after 1 token charged today, an estimate of 1000 against daily_tokens
// 1000 must be refused).
// What it shows (FAIL for Local, HELD for Redis): the Local limiter (one replica, and every
// replica's local_fallback_public) credits the refund to the new day — dayTokens became
// 1 − 1000 = −999 and a further 1000-token request was admitted (2 001 tokens on a 1 000
// budget; n such requests held over midnight add n budgets). At fault: Local's
// admission.release adds `diff` to s.dayTokens without checking that s.day is still the
// admission's day. Redis's done.lua checks the admission's day and held.
// Fixed since: Local's release refunds the day's tokens only on the admission's day.
func TestOutside56RefundAcrossMidnight(t *testing.T) {
	for _, backend := range []string{"Local", "Redis"} {
		t.Run(backend, func(t *testing.T) {
			clk := &clock{t: time.Date(2026, 3, 1, 23, 59, 50, 0, time.UTC)}
			var l Limiter
			if backend == "Local" {
				l = NewLocal(clk.now)
			} else {
				l = NewRedis(redisClient(t), uniquePrefix(), clk.now)
			}
			sc := []Scope{{Name: "tenant:midnight", Limits: Limits{DailyTokens: 1000}}}
			held, d := admit(t, l, sc, 1000) // yesterday's: the whole budget on its estimate
			if d != nil {
				t.Fatalf("premise: first request refused: %+v", d)
			}
			clk.t = clk.t.Add(20 * time.Second) // 00:00:10, the next UTC day
			done, d := admit(t, l, sc, 1)
			if d != nil {
				t.Fatalf("premise: first request of the new day refused: %+v", d)
			}
			done(1)
			held(0) // yesterday's request ends with no usage: its estimate is refunded
			extra := 0
			for range 3 {
				done, d := admit(t, l, sc, 1000)
				if d != nil {
					break
				}
				extra += 1000
				done(1000)
			}
			if extra > 0 {
				t.Fatalf("after 1 token charged today against daily_tokens 1000, %d more tokens were admitted: yesterday's refund raised today's budget", extra)
			}
		})
	}
}

// Attack: two replicas, 12 goroutines each (each replica its own connection pool), race
// at a concurrency limit of 3 while both heartbeat every 100 ms (SlotTTL 300 ms), so beats
// interleave with admissions and releases.
// Rule: at no moment are more requests admitted and not yet released than the limit, and
// once all are released the slots are all free again (none leaked, none counted twice).
// What it shows: HELD (max in flight 3 of 3; all 3 slots free again after the next beats).
// Only 49–107 of 4 800 attempts were admitted in ~0.3 s although a slot is held ~1 ms: the
// beats write admissions still on their way to Redis as held slots (below,
// TestOutside56BeatCountsRefusedAdmissionsAsSlots), and right after the run the third
// replica was at first refused — one run asserted that at once and failed on it.
func TestOutside56ConcurrencyRaceTwoReplicas(t *testing.T) {
	prefix := uniquePrefix()
	ctx, cancel := context.WithCancel(context.Background())
	var runs sync.WaitGroup
	defer func() { cancel(); runs.Wait() }()
	reps := []*Redis{NewRedis(redisClient(t), prefix, nil), NewRedis(redisClient(t), prefix, nil)}
	for _, r := range reps {
		r.SlotTTL = 300 * time.Millisecond
		runs.Go(func() { r.Run(ctx) })
	}
	sc := []Scope{{Name: "model:race", Limits: Limits{Concurrent: 3}}}
	var inflight, maxSeen, admitted, attempts atomic.Int64
	var wg sync.WaitGroup
	for g := range 24 {
		wg.Go(func() {
			r := reps[g%2]
			for range 200 {
				attempts.Add(1)
				done, d, err := r.Admit(context.Background(), sc, 1)
				if err != nil {
					t.Error(err)
					return
				}
				if d != nil {
					continue
				}
				admitted.Add(1)
				n := inflight.Add(1)
				for {
					m := maxSeen.Load()
					if n <= m || maxSeen.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(time.Millisecond) // the request's work
				inflight.Add(-1)
				done(1)
			}
		})
	}
	wg.Wait()
	t.Logf("max in flight %d of 3; %d admitted of %d attempts", maxSeen.Load(), admitted.Load(), attempts.Load())
	if maxSeen.Load() > 3 {
		t.Fatalf("%d requests in flight at once under a shared concurrency limit of 3", maxSeen.Load())
	}
	if admitted.Load() == 0 {
		t.Fatal("premise: nothing admitted")
	}
	// Every slot is free again — after the replicas' next heartbeats at the latest (a
	// beat that raced admissions may have written counts too high): a third replica takes
	// all three within 60 s, and no fourth.
	third := NewRedis(redisClient(t), prefix, nil)
	var dones []func(int)
	deadline := time.Now().Add(60 * time.Second)
	for len(dones) < 3 {
		done, d := admit(t, third, sc, 1)
		if d != nil {
			if time.Now().After(deadline) {
				t.Fatalf("60 s after every request was released, slot %d of 3 is still taken: %+v", len(dones)+1, d)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		dones = append(dones, done)
	}
	if _, d := admit(t, third, sc, 1); d == nil || d.What != "concurrent" {
		t.Fatalf("a fourth slot was given under a limit of 3: %+v", d)
	}
	for _, done := range dones {
		done(1)
	}
}

// privateRedis starts a redis-server of the test's own on a free loopback port (in memory
// only), returns its address and a function that stops it (SIGKILL, waited for); the
// cleanup stops it too.
func privateRedis(t *testing.T, port int) (addr string, stop func()) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found (scripts/test installs it): %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	t.Cleanup(stop)
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.Now().Add(60 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("private redis-server on %s did not answer within 60 s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, stop
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Attack: a replica holds both slots of a concurrency limit of 2 (two long requests) when
// Redis loses its data — FLUSHALL, then a restart of redis-server (in-memory, as
// scripts/test and a cache deployment run it). Another replica then asks for a slot.
// Rule (DESIGN, "Shared limits and a replica that dies"): the holder's heartbeat writes the
// count it really holds, so after its next beat the limit holds again; and once the holder
// releases, the slots come back (no release drives a count negative or frees another's).
// What it shows: HELD (after FLUSHALL and after a restart, the holder's beat put its 2 slots
// back and the other replica was refused; after the releases, 2 slots of 2 were free).
func TestOutside56RedisFlushAndRestartSlotsRestoredByBeat(t *testing.T) {
	port := freePort(t)
	addr, stop := privateRedis(t, port)
	mk := func() *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
		t.Cleanup(func() { c.Close() })
		return c
	}
	prefix := uniquePrefix()
	holder, other := NewRedis(mk(), prefix, nil), NewRedis(mk(), prefix, nil)
	sc := []Scope{{Name: "tenant:flush", Limits: Limits{Concurrent: 2}}}
	var dones []func(int)
	for range 2 {
		done, d := admit(t, holder, sc, 1)
		if d != nil {
			t.Fatalf("premise: %+v", d)
		}
		dones = append(dones, done)
	}
	ctx := context.Background()
	if err := mk().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := holder.beat(ctx); err != nil {
		t.Fatal(err)
	}
	if _, d := admit(t, other, sc, 1); d == nil || d.What != "concurrent" {
		t.Fatalf("after FLUSHALL and the holder's heartbeat, another replica was given a third slot of 2: %+v", d)
	}
	// Restart: kill the server, start a fresh one on the same port.
	stop()
	_, _ = privateRedis(t, port)
	deadline := time.Now().Add(60 * time.Second)
	for holder.beat(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the holder's heartbeat did not reach the restarted Redis within 60 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, d := admit(t, other, sc, 1); d == nil || d.What != "concurrent" {
		t.Fatalf("after a Redis restart and the holder's heartbeat, another replica was given a third slot of 2: %+v", d)
	}
	for _, done := range dones {
		done(1)
	}
	for i := range 2 {
		done, d := admit(t, other, sc, 1)
		if d != nil {
			t.Fatalf("after the holder released both, slot %d of 2 is still taken: %+v", i+1, d)
		}
		defer done(1)
	}
	if _, d := admit(t, other, sc, 1); d == nil {
		t.Fatal("a third slot of 2 was given after the releases (a release freed a slot twice)")
	}
}

// Attack: Mallory has used up her own key's rpm. She keeps sending requests to replica A
// (each is refused on her key: 429) so that at any moment several of her admissions are on
// their way to Redis; here 10 are when A's heartbeat runs. Every scope of a request with a
// concurrency limit is counted in A's memory before Redis is asked — the model's too, though
// her key refuses her — and the heartbeat writes that count to Redis. Then a victim of
// another tenant, on replica B, asks for the same model, whose concurrency limit is 2 and
// which nobody is using.
// Rule (DESIGN, "Shared limits and a replica that dies"): "Errors lean strict: a heartbeat
// racing an admission writes a count one too high until the next beat (a request at the
// limit may be refused spuriously then)" — a request far from the limit is never refused,
// and a request refused on one scope takes no slot of another.
// What it shows (FAIL): after the beat Redis held i:A = 10 for model:shared although no
// request held a slot (all 10 of Mallory's were refused on key rpm), and the victim was
// refused "concurrent" on model:shared with 0 of 2 slots in use; it stayed refused until
// A's next beat (5 s in production, SlotTTL / 3), and Mallory can do it again at every beat.
// At fault: Redis.Admit counts +1 on every concurrency-limited scope before the script runs
// (r.count(keys, scopes, 1)), and beat() writes r.slots, pending admissions included, as
// the count held; the error is the number of admissions in flight at the beat, not one.
// Fixed since: a slot is a field a request (m:REPLICA:N) that Redis adds when it admits;
// the replica lists it only once admitted, and the heartbeat writes back only those.
func TestOutside56BeatCountsRefusedAdmissionsAsSlots(t *testing.T) {
	prefix := uniquePrefix()
	// A go-redis hook holds replica A's admission scripts on their way to Redis while on:
	// the round trip of a slow Redis or network, made to last until the test opens it.
	// Heartbeats and releases pass.
	open := make(chan struct{})
	gate := newScriptHook(admitScript, admitLua, func() error { <-open; return nil })
	ca := redisClient(t)
	ca.AddHook(gate)
	a, b := NewRedis(ca, prefix, nil), NewRedis(redisClient(t), prefix, nil)
	mallory := []Scope{{Name: "key:mallory", Limits: Limits{RPM: 1}}, {Name: "tenant:evil"}, {Name: "model:shared", Limits: Limits{Concurrent: 2}}}
	victim := []Scope{{Name: "key:victim"}, {Name: "tenant:good"}, {Name: "model:shared", Limits: Limits{Concurrent: 2}}}
	done, d := admit(t, a, mallory, 1)
	if d != nil {
		t.Fatalf("premise: %+v", d)
	}
	done(1) // her one request a minute, used
	gate.on.Store(true)
	var wg sync.WaitGroup
	opened := false
	defer func() {
		if !opened {
			close(open)
		}
		wg.Wait()
	}()
	var refusedRPM atomic.Int64
	for range 10 {
		wg.Go(func() {
			_, d, err := a.Admit(context.Background(), mallory, 1)
			if err != nil {
				t.Error(err)
				return
			}
			if d != nil && d.What == "rpm" && d.Scope == "key:mallory" {
				refusedRPM.Add(1)
			}
		})
	}
	deadline := time.Now().Add(60 * time.Second)
	for gate.hits.Load() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of Mallory's admissions under way after 60 s", gate.hits.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if err := a.beat(context.Background()); err != nil { // A's heartbeat, while they are under way
		t.Fatal(err)
	}
	close(open)
	opened = true
	wg.Wait()
	if refusedRPM.Load() != 10 {
		t.Fatalf("premise: %d of Mallory's 10 requests refused on her key's rpm", refusedRPM.Load())
	}
	fields, _ := redisClient(t).HKeys(context.Background(), prefix+"model:shared").Result()
	held := 0 // A's slots as Redis holds them: one field a request
	for _, f := range fields {
		if strings.HasPrefix(f, "m:"+a.id+":") {
			held++
		}
	}
	done, d, err := b.Admit(context.Background(), victim, 1)
	if err != nil {
		t.Fatal(err)
	}
	if d == nil {
		done(1)
		return
	}
	// How long it lasts: until A's next heartbeat.
	a.beat(context.Background())
	done2, d2 := admit(t, b, victim, 1)
	if d2 == nil {
		done2(1)
	}
	t.Fatalf("model:shared (concurrent 2) with no request in flight: Redis holds %d slots of replica A after its heartbeat, and the victim of another tenant was refused %+v (after A's next beat: %+v)", held, d, d2)
}
