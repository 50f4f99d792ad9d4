package app

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"time"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/respguard"
)

// Key revocations reach every gateway replica two ways: with gateway.redis_url, the process
// that revokes (or rotates) a key publishes its id on PREFIX+"keys:revoked" and every
// gateway drops it from its cache at once; and, whatever Redis does, every gateway polls
// the store's revocations every KeyWatchInterval (authn.Keys.Watch).
//
// An announcement is sealed (forty-sixth session): AES-256-GCM under a key derived from
// the audit key (revocationLabel), which every replica holds alike, a random nonce, the
// channel's name as associated data:
//
//	announcement = version (1) | sealed at (8, Unix ns) | nonce (12) | sealed key id + tag (16)
//
// so that whoever can read Redis does not learn which keys are revoked, and whoever can
// publish there cannot make the gateways drop keys from their caches (each forged drop had
// cost a store lookup at the key's next request). An announcement that does not open, or
// was sealed more than revocationMaxAge ago (or as far ahead), or repeats one taken (its
// nonce), is dropped with an ALERT at most every revocationWarnEvery; the store poll
// carries the revocation either way. A replica of an older
// version publishes the id in the clear: newer ones drop that announcement (ALERT) and
// see the revocation at their next poll.

const (
	revocationLabel     = "strongroom/key-revocations/v1"
	revocationVersion   = 1
	revocationHeader    = 1 + 8 + 12
	revocationMaxAge    = 2 * time.Minute
	revocationWarnEvery = time.Minute
	revocationMaxID     = 256 // key ids are 16 hex digits; nothing longer is opened
)

func (a *App) revocationChannel() string { return a.redisPrefix() + "keys:revoked" }

// revocationAEAD is the announcements' AEAD (nil without the audit key).
func (a *App) revocationAEAD() cipher.AEAD {
	if a.revokeKey == nil {
		return nil
	}
	b, err := aes.NewCipher(a.revokeKey)
	if err != nil {
		panic(err) // a 32-byte key
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

// sealRevocation is the announcement of key id, sealed at now.
func sealRevocation(g cipher.AEAD, channel, id string, now time.Time) []byte {
	out := make([]byte, revocationHeader, revocationHeader+len(id)+g.Overhead())
	out[0] = revocationVersion
	binary.BigEndian.PutUint64(out[1:9], uint64(now.UnixNano()))
	rand.Read(out[9:revocationHeader])
	return g.Seal(out, out[9:revocationHeader], []byte(id), revocationAAD(channel, out[:revocationHeader]))
}

func revocationAAD(channel string, header []byte) []byte {
	return append(append([]byte(channel), 0), header...)
}

var errStaleRevocation = errors.New("sealed too long ago (or too far ahead)")

// openRevocation is the key id an announcement carries, if it opens and is fresh at now.
func openRevocation(g cipher.AEAD, channel string, msg []byte, now time.Time) (string, error) {
	if len(msg) < revocationHeader+g.Overhead() || len(msg) > revocationHeader+revocationMaxID+g.Overhead() || msg[0] != revocationVersion {
		return "", errors.New("not a sealed announcement")
	}
	id, err := g.Open(nil, msg[9:revocationHeader], msg[revocationHeader:], revocationAAD(channel, msg[:revocationHeader]))
	if err != nil {
		return "", errors.New("does not open under the revocation key")
	}
	sealed := time.Unix(0, int64(binary.BigEndian.Uint64(msg[1:9])))
	if d := now.Sub(sealed); d > revocationMaxAge || d < -revocationMaxAge {
		return "", errStaleRevocation
	}
	return string(id), nil
}

// announceRevocation tells running gateways that key id changed (best effort: a failed
// publish leaves the store poll to carry it, and is logged).
func (a *App) announceRevocation(ctx context.Context, id string) {
	if a.Config.Gateway.RedisURL == "" {
		return
	}
	g := a.revocationAEAD()
	if g == nil {
		a.Log.Warn("key revocation not announced through Redis (no audit key to seal it); gateways see it at their next store poll", "key_id", id)
		return
	}
	rdb, err := a.Redis()
	if err == nil {
		err = rdb.Publish(ctx, a.revocationChannel(), sealRevocation(g, a.revocationChannel(), id, time.Now())).Err()
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
	g := a.revocationAEAD()
	if g == nil {
		a.Log.Error("key revocations: no audit key to open announcements with; store poll only")
		return
	}
	channel := a.revocationChannel()
	var lastWarn time.Time
	seen := map[[12]byte]time.Time{} // nonces of the announcements taken within revocationMaxAge
	respguard.SubscribeRefusing(ctx, rdb, channel, a.Log, func(msg string) {
		now := time.Now()
		id, err := openRevocation(g, channel, []byte(msg), now)
		if err == nil {
			// A genuine announcement replayed (a rotation's names a key still live for its
			// overlap: each replay had cost that key a store read — outside round 63).
			nonce := [12]byte([]byte(msg[9:revocationHeader]))
			if _, again := seen[nonce]; again {
				err = errors.New("a repeat of an announcement already taken")
			} else {
				for n, at := range seen {
					if now.Sub(at) > 2*revocationMaxAge {
						delete(seen, n)
					}
				}
				seen[nonce] = now
			}
		}
		if err != nil {
			if a.revocationsRejected != nil {
				a.revocationsRejected.Inc()
			}
			if now.Sub(lastWarn) >= revocationWarnEvery {
				lastWarn = now
				a.Log.Error("ALERT key revocations: an announcement on Redis was dropped (someone who can publish there without the audit key, a replica of an older version, or a clock more than 2 minutes off); revocations still reach this gateway by its store poll",
					"channel", channel, "why", err.Error(), "bytes", len(msg))
			}
			return
		}
		keys.Forget(id)
	}, func() { // a message past the reply guard's limits: an announcement dropped too
		if a.revocationsRejected != nil {
			a.revocationsRejected.Inc()
		}
	})
}

// keyWatchInterval is how often gateways poll the store's revocations (the bound without
// Redis): KeyWatchInterval, default 250 ms.
func (a *App) keyWatchInterval() time.Duration {
	if a.KeyWatchInterval > 0 {
		return a.KeyWatchInterval
	}
	return 250 * time.Millisecond
}
