package limits

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/tick"
)

//go:embed admit.lua
var admitLua string

//go:embed done.lua
var doneLua string

//go:embed beat.lua
var beatLua string

var (
	admitScript = redis.NewScript(admitLua)
	doneScript  = redis.NewScript(doneLua)
	beatScript  = redis.NewScript(beatLua)
)

// DefaultSlotTTL is how long a replica's concurrency slots outlive its last heartbeat (Run
// beats every third of it): a replica killed holding slots gives them back to the others
// within it.
const DefaultSlotTTL = 15 * time.Second

// Redis is a Limiter shared by every gateway replica: one Lua script checks and charges
// all scopes atomically, so a limit holds globally.
//
// Concurrency slots are counted per replica (each Redis value has a random id), and a
// replica's slots lapse SlotTTL after they were last renewed, by Redis's clock: Run renews
// them, writing the count the replica really holds. So a replica that dies holding slots
// (kill -9, its host lost) gives them back within SlotTTL, and a release lost on the way
// to Redis is set right by the next heartbeat — a shared counter kept them taken until
// the key's two-day expiry. Without Run, slots lapse SlotTTL after their request began.
type Redis struct {
	c       redis.UniversalClient
	prefix  string
	now     func() time.Time
	id      string
	SlotTTL time.Duration // DefaultSlotTTL unless set before use

	// Slots held by this replica, by scope key. A scope stays listed at 0 until a
	// heartbeat has written the 0 (a lost release healed), then is dropped. An admission
	// counts its slots here before Redis does (and takes them back if refused), a release
	// after: what a heartbeat writes is never fewer than the replica holds.
	mu    sync.Mutex
	slots map[string]int
}

// NewRedis uses a go-redis client; keys are prefixed (e.g. "strongroom:limits:").
func NewRedis(c redis.UniversalClient, prefix string, now func() time.Time) *Redis {
	if now == nil {
		now = time.Now
	}
	var id [8]byte
	rand.Read(id[:])
	return &Redis{c: c, prefix: prefix, now: now, id: hex.EncodeToString(id[:]), slots: map[string]int{}}
}

func (r *Redis) ttl() time.Duration {
	if r.SlotTTL > 0 {
		return r.SlotTTL
	}
	return DefaultSlotTTL
}

// Run renews this replica's concurrency slots every third of SlotTTL until ctx ends. A
// failed renewal is tried again at the next beat; slots not renewed within SlotTTL lapse
// (the others may then admit more than the limit until the next beat writes them again).
func (r *Redis) Run(ctx context.Context) {
	tick.Every(ctx, r.ttl()/3, func() {
		bctx, cancel := context.WithTimeout(ctx, r.ttl()/3)
		r.beat(bctx)
		cancel()
	})
}

// beat writes the slots this replica holds, renewed for SlotTTL. It holds mu throughout, so
// that no admission or release of this replica is counted here and not there, or the reverse,
// but one already in flight to Redis: a count written too high for a beat, never too low.
func (r *Redis) beat(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.slots) == 0 {
		return nil
	}
	keys := make([]string, 0, len(r.slots))
	args := []any{r.id, r.ttl().Milliseconds()}
	for k, n := range r.slots {
		keys = append(keys, k)
		args = append(args, n)
	}
	if err := beatScript.Run(ctx, r.c, keys, args...).Err(); err != nil {
		return fmt.Errorf("limits: redis heartbeat: %w", err)
	}
	for k, n := range r.slots {
		if n == 0 {
			delete(r.slots, k)
		}
	}
	return nil
}

// count adds d to this replica's slots of every scope with a concurrency limit.
func (r *Redis) count(keys []string, scopes []Scope, d int) {
	r.mu.Lock()
	for i, s := range scopes {
		if s.Limits.Concurrent > 0 {
			r.slots[keys[i]] += d
		}
	}
	r.mu.Unlock()
}

// Admit implements Limiter. An error (Redis unreachable) is for the caller to turn into a
// deny or a local fallback.
func (r *Redis) Admit(ctx context.Context, scopes []Scope, est int) (func(int), *Denied, error) {
	now := r.now()
	keys := make([]string, len(scopes))
	args := []any{now.UnixMilli(), est, now.UTC().Format("2006-01-02"), r.id, r.ttl().Milliseconds()}
	conc := false
	for i, s := range scopes {
		keys[i] = r.prefix + s.Name
		args = append(args, s.Limits.RPM, s.Limits.TPM, s.Limits.Concurrent, s.Limits.DailyTokens)
		conc = conc || s.Limits.Concurrent > 0
	}
	if conc {
		r.count(keys, scopes, 1)
	}
	res, err := admitScript.Run(ctx, r.c, keys, args...).Slice()
	if err != nil {
		if conc {
			r.count(keys, scopes, -1)
		}
		return nil, nil, fmt.Errorf("limits: redis: %w", err)
	}
	if idx, _ := res[0].(int64); idx > 0 {
		if conc {
			r.count(keys, scopes, -1)
		}
		what, _ := res[1].(string)
		ms, _ := res[2].(int64)
		retry := time.Duration(ms) * time.Millisecond
		if ms < 0 { // daily budget: until midnight UTC
			retry = now.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour).Sub(now)
		}
		return nil, &Denied{Scope: scopes[idx-1].Name, What: what, RetryAfter: retry}, nil
	}
	var once sync.Once
	return func(actual int) {
		once.Do(func() {
			dargs := []any{actual - est, now.UTC().Format("2006-01-02"), r.id}
			for _, s := range scopes {
				dargs = append(dargs, s.Limits.TPM, s.Limits.Concurrent)
			}
			// Best effort: a lost refund only makes the limit stricter for a while, and a
			// lost release of a slot is set right by the next heartbeat (Run).
			doneScript.Run(context.WithoutCancel(ctx), r.c, keys, dargs...)
			if conc {
				r.count(keys, scopes, -1)
			}
		})
	}, nil, nil
}
