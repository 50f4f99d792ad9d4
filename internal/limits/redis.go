package limits

import (
	"context"
	_ "embed"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

//go:embed admit.lua
var admitLua string

//go:embed done.lua
var doneLua string

var (
	admitScript = redis.NewScript(admitLua)
	doneScript  = redis.NewScript(doneLua)
)

// Redis is a Limiter shared by every gateway replica: one Lua script checks and charges
// all scopes atomically, so a limit holds globally.
type Redis struct {
	c      redis.UniversalClient
	prefix string
	now    func() time.Time
}

// NewRedis uses a go-redis client; keys are prefixed (e.g. "strongroom:limits:").
func NewRedis(c redis.UniversalClient, prefix string, now func() time.Time) *Redis {
	if now == nil {
		now = time.Now
	}
	return &Redis{c: c, prefix: prefix, now: now}
}

// Admit implements Limiter. An error (Redis unreachable) is for the caller to turn into a
// deny or a local fallback.
func (r *Redis) Admit(ctx context.Context, scopes []Scope, est int) (func(int), *Denied, error) {
	now := r.now()
	keys := make([]string, len(scopes))
	args := []any{now.UnixMilli(), est, now.UTC().Format("2006-01-02")}
	for i, s := range scopes {
		keys[i] = r.prefix + s.Name
		args = append(args, s.Limits.RPM, s.Limits.TPM, s.Limits.Concurrent, s.Limits.DailyTokens)
	}
	res, err := admitScript.Run(ctx, r.c, keys, args...).Slice()
	if err != nil {
		return nil, nil, fmt.Errorf("limits: redis: %w", err)
	}
	if idx, _ := res[0].(int64); idx > 0 {
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
			dargs := []any{actual - est, now.UTC().Format("2006-01-02")}
			for _, s := range scopes {
				dargs = append(dargs, s.Limits.TPM)
			}
			// Best effort: a lost refund only makes the limit stricter for a while.
			doneScript.Run(context.WithoutCancel(ctx), r.c, keys, dargs...)
		})
	}, nil, nil
}
