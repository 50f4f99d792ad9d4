package limits

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

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

// TestRedisLostReleaseHeals: a release lost on the way to Redis (here: the replica's count
// raised behind its back, as a lost decrement leaves it) is set right by the replica's
// next heartbeat, which writes what it really holds.
func TestRedisLostReleaseHeals(t *testing.T) {
	prefix := uniquePrefix()
	c := redisClient(t)
	a, b := NewRedis(c, prefix, nil), NewRedis(redisClient(t), prefix, nil)
	done, d := admit(t, a, concScope, 1)
	if d != nil {
		t.Fatal(d)
	}
	done(1)
	if err := c.HIncrBy(context.Background(), prefix+concScope[0].Name, "i:"+a.id, 2).Err(); err != nil {
		t.Fatal(err)
	}
	if _, d := admit(t, b, concScope, 1); d == nil || d.What != "concurrent" {
		t.Fatalf("premise: two lost releases should hold both slots, got %+v", d)
	}
	if err := a.beat(context.Background()); err != nil {
		t.Fatal(err)
	}
	done, d = admit(t, b, concScope, 1)
	if d != nil {
		t.Fatalf("after the holder's heartbeat, its lost releases still hold the slots: %+v", d)
	}
	done(1)
}
