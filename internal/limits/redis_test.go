package limits

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/strongroom/strongroom/internal/testenv"
)

func redisClient(t *testing.T) *redis.Client { return testenv.Redis(t) }

var prefixes atomic.Int64

func uniquePrefix() string {
	return fmt.Sprintf("test:%d:%d:", time.Now().UnixNano(), prefixes.Add(1))
}

// TestRedis runs the conformance suite against the real redis-server from scripts/test.
func TestRedis(t *testing.T) {
	c := redisClient(t)
	conformance(t, func(t *testing.T, now func() time.Time) Limiter { return NewRedis(c, uniquePrefix(), now) })
}

// TestRedisGlobalAcrossReplicas: two gateway replicas, each with its own connection pool,
// share one limit; together they admit exactly the limit.
func TestRedisGlobalAcrossReplicas(t *testing.T) {
	prefix := uniquePrefix()
	replicas := []*Redis{NewRedis(redisClient(t), prefix, nil), NewRedis(redisClient(t), prefix, nil)}
	scopes := []Scope{{Name: "tenant:acme", Limits: Limits{RPM: 50}}}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			l := replicas[g%2]
			for range 20 {
				done, d, err := l.Admit(context.Background(), scopes, 1)
				if err != nil {
					t.Error(err)
					return
				}
				if d == nil {
					admitted.Add(1)
					done(1)
				}
			}
		})
	}
	wg.Wait()
	// 160 attempts in well under a second against 50 per minute: the bucket's 50, plus at
	// most one refilled while the test ran.
	if n := admitted.Load(); n < 50 || n > 51 {
		t.Fatalf("two replicas admitted %d requests under a shared limit of 50/min", n)
	}
}

func TestRedisUnreachable(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	_, d, err := NewRedis(c, "x:", nil).Admit(context.Background(), []Scope{{Name: "k"}}, 1)
	if err == nil || d != nil {
		t.Fatalf("unreachable redis: %v %v", d, err)
	}
}

// TestRedisDownKeepsBoundedReleases: while Redis is down every admission fails and is kept
// for the next heartbeat to free (Redis may have run it); an outage does not grow them
// without bound.
func TestRedisDownKeepsBoundedReleases(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	r := NewRedis(c, "x:", nil)
	sc := []Scope{{Name: "key:k", Limits: Limits{Concurrent: 1}}, {Name: "model:m", Limits: Limits{Concurrent: 5}}}
	for range maxUnsent + 100 {
		if _, _, err := r.Admit(context.Background(), sc, 1); err == nil {
			t.Fatal("admitted with Redis down")
		}
	}
	r.mu.Lock()
	n := 0
	for _, ids := range r.unsent {
		n += len(ids)
	}
	r.mu.Unlock()
	if n > maxUnsent {
		t.Fatalf("%d releases kept after %d failed admissions, bound %d", n, maxUnsent+100, maxUnsent)
	}
	if n == 0 {
		t.Fatal("no release kept for the next heartbeat")
	}
}
