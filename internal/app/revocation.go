package app

import (
	"context"
	"time"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/respguard"
)

// Key revocations reach every gateway replica two ways: with gateway.redis_url, the process
// that revokes (or rotates) a key publishes its id on PREFIX+"keys:revoked" and every
// gateway drops it from its cache at once; and, whatever Redis does, every gateway polls
// the store's revocations every KeyWatchInterval (authn.Keys.Watch).

func (a *App) revocationChannel() string { return a.redisPrefix() + "keys:revoked" }

// announceRevocation tells running gateways that key id changed (best effort: a failed
// publish leaves the store poll to carry it, and is logged).
func (a *App) announceRevocation(ctx context.Context, id string) {
	if a.Config.Gateway.RedisURL == "" {
		return
	}
	rdb, err := a.Redis()
	if err == nil {
		err = rdb.Publish(ctx, a.revocationChannel(), id).Err()
	}
	if err != nil {
		a.Log.Warn("key revocation not announced through Redis; gateways see it at their next store poll", "key_id", id, "err", err)
	}
}

// followRevocations drops announced keys from keys' cache until ctx ends (respguard.Subscribe:
// subscribes again after a connection loss, or a message go-redis could not read).
func (a *App) followRevocations(ctx context.Context, keys *authn.Keys) {
	rdb, err := a.Redis()
	if err != nil {
		a.Log.Error("key revocations: no Redis; store poll only", "err", err)
		return
	}
	respguard.Subscribe(ctx, rdb, a.revocationChannel(), a.Log, keys.Forget)
}

// keyWatchInterval is how often gateways poll the store's revocations (the bound without
// Redis): KeyWatchInterval, default 250 ms.
func (a *App) keyWatchInterval() time.Duration {
	if a.KeyWatchInterval > 0 {
		return a.KeyWatchInterval
	}
	return 250 * time.Millisecond
}
