package limits

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/testenv"
)

// A gateway replica holding concurrency slots in the shared Redis can die without
// releasing them (kill -9, OOM, the host lost), or lose a release on a network blip. The
// slots must come back to the other replicas — not stay taken until the key's two-day
// expiry, as a plain shared counter leaves them.

// slotTTLForTest: long against the heartbeat (a third of it), short for the test's wait.
const slotTTLForTest = 2 * time.Second

var concScope = []Scope{{Name: "key:conc", Limits: Limits{Concurrent: 2}}}

// TestLimitsReplicaHelper is the replica that is killed: it takes both slots of
// concScope, says "held", and waits to be killed. Run only as a helper.
func TestLimitsReplicaHelper(t *testing.T) {
	prefix := os.Getenv("STRONGROOM_LIMITS_HELPER_PREFIX")
	if prefix == "" {
		t.Skip("helper process for TestRedisKilledReplicaSlots")
	}
	r := NewRedis(redisClient(t), prefix, nil)
	r.SlotTTL = slotTTLForTest
	go r.Run(context.Background())
	for i := range 2 {
		if _, d := admit(t, r, concScope, 1); d != nil {
			t.Fatalf("helper's request %d denied: %+v", i, d)
		}
	}
	fmt.Println("held")
	select {}
}

// TestRedisKilledReplicaSlots: the slots of a replica killed with SIGKILL while holding
// them are refused to another replica while it lives, and given back once it is dead.
func TestRedisKilledReplicaSlots(t *testing.T) {
	prefix := uniquePrefix()
	cmd := testenv.HelperCmd(t, "TestLimitsReplicaHelper", "STRONGROOM_LIMITS_HELPER_PREFIX="+prefix)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	held := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "held" {
				held <- true
				break
			}
		}
		close(held)
	}()
	select {
	case ok := <-held:
		if !ok {
			t.Fatal("the helper replica ended before it held its slots")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the helper replica did not hold its slots within 60 s")
	}

	r := NewRedis(redisClient(t), prefix, nil)
	r.SlotTTL = slotTTLForTest
	if _, d := admit(t, r, concScope, 1); d == nil || d.What != "concurrent" {
		t.Fatalf("a live replica's two slots of two: another replica's request was %+v, want refused for concurrency", d)
	}
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(60 * time.Second)
	for {
		done, d := admit(t, r, concScope, 1)
		if d == nil {
			done(1)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("60 s after the replica holding them was killed, its slots are still taken: %+v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRedisSlotsHeldWhileAlive: a live replica's slot stays taken past SlotTTL, however
// long its request lasts (its heartbeat renews it).
func TestRedisSlotsHeldWhileAlive(t *testing.T) {
	prefix := uniquePrefix()
	a, b := NewRedis(redisClient(t), prefix, nil), NewRedis(redisClient(t), prefix, nil)
	a.SlotTTL, b.SlotTTL = 5*time.Second, 5*time.Second
	one := []Scope{{Name: "key:one", Limits: Limits{Concurrent: 1}}}
	doneA, d := admit(t, a, one, 1)
	if d != nil {
		t.Fatalf("first request denied: %+v", d)
	}
	// Beats about every 100 ms, by hand (no timer to miss; only a stall of the test of
	// 50 times that could), for 2 × SlotTTL: the slot would have lapsed without them.
	for end := time.Now().Add(2 * a.SlotTTL); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := a.beat(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, d := admit(t, b, one, 1); d == nil || d.What != "concurrent" {
			t.Fatalf("the live replica's slot was given to another: %+v", d)
		}
	}
	doneA(1)
	doneB, d := admit(t, b, one, 1)
	if d != nil {
		t.Fatalf("after the release: %+v", d)
	}
	doneB(1)
}

// TestRedisLostReleaseHeals: a release that does not reach Redis (its script fails: a
// network blip) is sent again by the replica's next heartbeat; until then the slot is
// taken, after it free.
func TestRedisLostReleaseHeals(t *testing.T) {
	prefix := uniquePrefix()
	ca := redisClient(t)
	drop := newScriptHook(doneScript, doneLua, func() error { return errors.New("connection reset (test)") })
	ca.AddHook(drop)
	a, b := NewRedis(ca, prefix, nil), NewRedis(redisClient(t), prefix, nil)
	one := []Scope{{Name: "key:one", Limits: Limits{Concurrent: 1}}}
	done, d := admit(t, a, one, 1)
	if d != nil {
		t.Fatal(d)
	}
	drop.on.Store(true)
	done(1)
	if drop.hits.Load() == 0 {
		t.Fatal("premise: the release reached Redis")
	}
	drop.on.Store(false)
	if _, d := admit(t, b, one, 1); d == nil || d.What != "concurrent" {
		t.Fatalf("premise: the lost release should hold the slot, got %+v", d)
	}
	if err := a.beat(context.Background()); err != nil {
		t.Fatal(err)
	}
	done, d = admit(t, b, one, 1)
	if d != nil {
		t.Fatalf("after the holder's heartbeat, its lost release still holds the slot: %+v", d)
	}
	done(1)
}

// scriptHook is a go-redis hook on one of the limiter's scripts: while on, each command
// that runs it counts a hit and calls hit first, which fails the command with its error or
// lets it go on with nil (after holding it, say) — the network lost, or slow, on its way.
type scriptHook struct {
	hash, lua string
	hit       func() error
	on        atomic.Bool
	hits      atomic.Int64
}

func newScriptHook(s *redis.Script, lua string, hit func() error) *scriptHook {
	return &scriptHook{hash: s.Hash(), lua: lua, hit: hit}
}

func (h *scriptHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *scriptHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *scriptHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if a := cmd.Args(); h.on.Load() && len(a) > 1 && (a[1] == h.hash || a[1] == h.lua) {
			h.hits.Add(1)
			if err := h.hit(); err != nil {
				return err
			}
		}
		return next(ctx, cmd)
	}
}

// TestRedisDayIsTheUTCDate: the script's date (its own arithmetic: Lua in Redis has no
// date functions) is Go's UTC date, over leap days, year and century ends.
func TestRedisDayIsTheUTCDate(t *testing.T) {
	c := redisClient(t)
	for _, at := range []time.Time{
		time.Date(2026, 12, 6, 23, 59, 59, 999e6, time.UTC),
		time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2028, 2, 29, 12, 0, 0, 0, time.UTC),
		time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2100, 2, 28, 23, 0, 0, 0, time.UTC),
		time.Date(2100, 3, 1, 1, 0, 0, 0, time.UTC),
		time.Date(2000, 2, 29, 0, 0, 0, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC),
	} {
		prefix := uniquePrefix()
		r := NewRedis(c, prefix, func() time.Time { return at })
		done, d := admit(t, r, []Scope{{Name: "key:d", Limits: Limits{DailyTokens: 10}}}, 1)
		if d != nil {
			t.Fatal(d)
		}
		done(1)
		got, err := c.HGet(context.Background(), prefix+"key:d", "day").Result()
		if err != nil {
			t.Fatal(err)
		}
		if want := at.Format("2006-01-02"); got != want {
			t.Errorf("at %v the script's day is %s, want %s", at, got, want)
		}
	}
}

// TestRedisSlowBeatHoldsNoRequest: a heartbeat slow to reach Redis (latency, a spike timed
// to it) must not hold up the replica's admissions and releases meanwhile; and a slot
// released while the beat was on its way, which the beat then writes back, is freed after
// it — not held until the replica ends.
func TestRedisSlowBeatHoldsNoRequest(t *testing.T) {
	prefix := uniquePrefix()
	ca := redisClient(t)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	slow := newScriptHook(beatScript, beatLua, func() error {
		entered <- struct{}{}
		<-release
		return nil
	})
	ca.AddHook(slow)
	a, b := NewRedis(ca, prefix, nil), NewRedis(redisClient(t), prefix, nil)
	two := []Scope{{Name: "key:two", Limits: Limits{Concurrent: 2}}}
	done1, d := admit(t, a, two, 1)
	if d != nil {
		t.Fatal(d)
	}
	slow.on.Store(true)
	beaten := make(chan error, 1)
	go func() { beaten <- a.beat(context.Background()) }()
	select {
	case <-entered:
	case <-time.After(60 * time.Second):
		t.Fatal("the heartbeat did not start within 60 s")
	}
	// The beat is on its way with request 1's slot. Request 2 is admitted and request 1
	// released meanwhile; neither may wait for the beat.
	moved := make(chan struct{})
	var done2 func(int)
	go func() {
		defer close(moved)
		done2, d = admit(t, a, two, 1)
		done1(1)
	}()
	select {
	case <-moved:
	case <-time.After(60 * time.Second):
		close(release)
		t.Fatal("an admission and a release waited 60 s for a heartbeat on its way to Redis")
	}
	if d != nil {
		t.Fatalf("request 2: %+v", d)
	}
	slow.on.Store(false)
	close(release)
	if err := <-beaten; err != nil {
		t.Fatal(err)
	}
	// Redis now holds request 2's slot only: one more fits, then none.
	doneB, d := admit(t, b, two, 1)
	if d != nil {
		t.Fatalf("request 1's slot, released while the beat was on its way, is held after it: %+v", d)
	}
	if _, d := admit(t, b, two, 1); d == nil || d.What != "concurrent" {
		t.Fatalf("request 2's slot is not held: a third request was %+v", d)
	}
	doneB(1)
	done2(1)
}
