package limits

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
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
// all scopes atomically, so a limit holds globally. Times and days are Redis's own clock,
// the same for every replica (a replica's clock skewed across midnight reset the day's
// budget; one behind locked a scope out of its bucket).
//
// A concurrency slot is one field a request (its replica's random id and the request's
// number), and a replica's slots lapse SlotTTL after they were last renewed. Run renews
// them: it writes again the slots the replica's requests hold (after Redis was flushed or
// restarted they are back) and frees those whose release did not reach Redis (freeing is
// idempotent). So a replica that dies holding slots (kill -9, its host lost) gives them back
// within SlotTTL; without Run, slots lapse SlotTTL after their request began.
type Redis struct {
	c       redis.UniversalClient
	prefix  string
	now     func() time.Time // nil: Redis's clock
	id      string
	seq     atomic.Uint64
	SlotTTL time.Duration // DefaultSlotTTL unless set before use
	Timeout time.Duration // DefaultTimeout unless set before use
	Log     *slog.Logger  // Run's heartbeat failures and ALERTs; nil: none
	names   scopeNames    // a scope's key name (HideNames)

	// The slots this replica's requests hold, by scope key: added once Redis admitted the
	// request, removed before Redis is told of the release — so that a heartbeat never
	// writes back one Redis refused, nor a slot being freed (one released while a beat is
	// on its way is freed again after it). Releases Redis did not get, by scope key, for
	// the next heartbeat.
	mu      sync.Mutex
	slots   map[string]map[uint64]struct{}
	unsent  map[string][]uint64
	nUnsent int
	beating map[string]map[uint64]struct{} // the slots a heartbeat on its way writes
}

// maxUnsent bounds the releases kept for the next heartbeat: while Redis is down every
// admission fails and is kept (Redis may have run it with the answer lost), and an outage
// must not grow the process without bound. Past it, such a slot — only one Redis did admit
// — stays taken until this replica ends.
const maxUnsent = 4096

// NewRedis uses a go-redis client; keys are prefixed (e.g. "strongroom:limits:"). now is
// for tests: nil (production) uses Redis's clock.
func NewRedis(c redis.UniversalClient, prefix string, now func() time.Time) *Redis {
	var id [8]byte
	rand.Read(id[:])
	return &Redis{c: c, prefix: prefix, now: now, id: hex.EncodeToString(id[:]),
		slots: map[string]map[uint64]struct{}{}, unsent: map[string][]uint64{}}
}

// DefaultTimeout bounds an admission's and a release's wait for Redis (a healthy one answers
// in well under a millisecond): a Redis that hangs — paused, or its packets dropped — is an
// error after it, so a restricted model is refused then rather than after the client's read
// timeouts and retries (~10 s with go-redis's defaults). The client must let the context's
// deadline reach its reads (go-redis: Options.ContextTimeoutEnabled).
const DefaultTimeout = 2 * time.Second

func (r *Redis) timeout() time.Duration {
	if r.Timeout > 0 {
		return r.Timeout
	}
	return DefaultTimeout
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
	failing := false
	tick.Every(ctx, r.ttl()/3, func() {
		bctx, cancel := context.WithTimeout(ctx, r.ttl()/3)
		err := r.beat(bctx)
		cancel()
		switch {
		case errors.Is(err, errNotHashes) && r.Log != nil:
			r.Log.Error("ALERT "+err.Error(), "hint", "someone with access to Redis wrote the limiter's keys")
		case err != nil && !failing && r.Log != nil: // once an outage
			r.Log.Error("limits: redis heartbeat failed; this replica's slots lapse unless a later one succeeds", "err", err)
		case err == nil && failing && r.Log != nil:
			r.Log.Info("limits: redis heartbeat succeeds again")
		}
		failing = err != nil && !errors.Is(err, errNotHashes)
	})
}

// errNotHashes: a heartbeat skipped scope keys that are not hashes (the others renewed).
var errNotHashes = errors.New("limits: redis heartbeat: scope keys that are not hashes skipped; their slots are not renewed and refuse nothing")

// beat writes the slots this replica's requests hold, renewed for SlotTTL, and frees
// those whose release did not reach Redis. It does not hold mu while Redis answers (a slow
// Redis must not hold up admissions and releases): a slot released meanwhile may have been
// freed in Redis before the beat wrote it back, so it is freed again after the beat.
func (r *Redis) beat(ctx context.Context) error {
	r.mu.Lock()
	if len(r.slots) == 0 && len(r.unsent) == 0 {
		r.mu.Unlock()
		return nil
	}
	held := make(map[string]map[uint64]struct{}, len(r.slots))
	for k, s := range r.slots {
		held[k] = maps.Clone(s)
	}
	free := r.takeUnsent()
	r.beating = held
	r.mu.Unlock()

	err := r.sendOrKeep(ctx, held, free)
	r.mu.Lock()
	r.beating = nil
	again := len(r.unsent) > 0
	r.mu.Unlock()
	if err != nil || !again {
		return err
	}
	return r.flush(ctx)
}

// flush sends the releases that have not reached Redis, and nothing else.
func (r *Redis) flush(ctx context.Context) error {
	r.mu.Lock()
	free := r.takeUnsent()
	r.mu.Unlock()
	if len(free) == 0 {
		return nil
	}
	return r.sendOrKeep(ctx, nil, free)
}

// takeUnsent hands over the releases kept for the next heartbeat. mu is held.
func (r *Redis) takeUnsent() map[string][]uint64 {
	free := r.unsent
	r.unsent, r.nUnsent = map[string][]uint64{}, 0
	return free
}

// sendOrKeep sends a heartbeat; if it fails, free's releases are kept for the next one.
func (r *Redis) sendOrKeep(ctx context.Context, held map[string]map[uint64]struct{}, free map[string][]uint64) error {
	skipped, err := r.send(ctx, held, free)
	if err == nil {
		if skipped > 0 {
			return fmt.Errorf("%w (%d)", errNotHashes, skipped)
		}
		return nil
	}
	r.mu.Lock()
	for k, ns := range free {
		for _, n := range ns {
			r.unsend(k, n)
		}
	}
	r.mu.Unlock()
	return redisError("limits: redis heartbeat", err)
}

// send runs the heartbeat script: held's slots written and renewed, free's freed. It
// returns how many scope keys the script skipped (not hashes).
func (r *Redis) send(ctx context.Context, held map[string]map[uint64]struct{}, free map[string][]uint64) (int, error) {
	var keys []string
	args := []any{r.id, r.ttl().Milliseconds()}
	add := func(k string, held map[uint64]struct{}, free []uint64) {
		keys = append(keys, k)
		args = append(args, len(held))
		for n := range held {
			args = append(args, n)
		}
		args = append(args, len(free))
		for _, n := range free {
			args = append(args, n)
		}
	}
	for k, h := range held {
		add(k, h, free[k])
	}
	for k, f := range free {
		if _, ok := held[k]; !ok {
			add(k, nil, f)
		}
	}
	return beatScript.Run(ctx, r.c, keys, args...).Int()
}

// unsend keeps request n's release in scope key k for the next heartbeat, within
// maxUnsent. mu is held.
func (r *Redis) unsend(k string, n uint64) {
	if r.nUnsent < maxUnsent {
		r.unsent[k] = append(r.unsent[k], n)
		r.nUnsent++
	}
}

// hold records (or, with held false, forgets) request n's slots in every scope with a
// concurrency limit; unsent adds them to the releases the next heartbeat sends.
func (r *Redis) hold(keys []string, scopes []Scope, n uint64, held, unsent bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, s := range scopes {
		if s.Limits.Concurrent <= 0 {
			continue
		}
		k := keys[i]
		switch {
		case held:
			if r.slots[k] == nil {
				r.slots[k] = map[uint64]struct{}{}
			}
			r.slots[k][n] = struct{}{}
		case unsent:
			r.unsend(k, n)
		default:
			delete(r.slots[k], n)
			if len(r.slots[k]) == 0 {
				delete(r.slots, k)
			}
			if _, ok := r.beating[k][n]; ok {
				r.unsend(k, n) // the beat on its way may write it back after this release
			}
		}
	}
}

// Admit implements Limiter. An error (Redis unreachable) is for the caller to turn into a
// deny or a local fallback.
func (r *Redis) Admit(ctx context.Context, scopes []Scope, est int) (func(int), *Denied, error) {
	keys := make([]string, len(scopes))
	n := r.seq.Add(1)
	var now any = ""
	if r.now != nil {
		now = r.now().UnixMilli()
	}
	args := []any{now, est, r.id, n, r.ttl().Milliseconds()}
	conc := false
	for i, s := range scopes {
		keys[i] = r.names.key(r.prefix, s.Name)
		args = append(args, s.Limits.RPM, s.Limits.TPM, s.Limits.Concurrent, s.Limits.DailyTokens)
		conc = conc || s.Limits.Concurrent > 0
	}
	actx, cancel := context.WithTimeout(ctx, r.timeout())
	res, err := admitScript.Run(actx, r.c, keys, args...).Slice()
	cancel()
	var day string
	var denied *Denied
	if err == nil {
		day, denied, err = admitAnswer(res, scopes)
	}
	if err != nil {
		// Redis may have admitted it with the answer lost (or mangled): its slots are freed
		// by the next heartbeat, never held by a request that is not running.
		if conc {
			r.hold(keys, scopes, n, false, true)
		}
		return nil, nil, redisError("limits: redis", err)
	}
	if denied != nil {
		return nil, denied, nil
	}
	if conc {
		r.hold(keys, scopes, n, true, false)
	}
	var once sync.Once
	return func(actual int) {
		once.Do(func() {
			if conc {
				r.hold(keys, scopes, n, false, false)
			}
			dargs := []any{actual - est, day, r.id, n}
			for _, s := range scopes {
				dargs = append(dargs, s.Limits.TPM, s.Limits.Concurrent)
			}
			// A lost refund only makes the limit stricter for a while; a lost release of a
			// slot goes with the next heartbeat (Run).
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout())
			defer cancel()
			if err := doneScript.Run(dctx, r.c, keys, dargs...).Err(); err != nil && conc {
				r.hold(keys, scopes, n, false, true)
			}
		})
	}, nil, nil
}

// errNotAdmitAnswer: Redis answered the admission with what admit.lua never returns.
var errNotAdmitAnswer = errors.New("an answer that is not the admission script's")

// admitAnswer reads admit.lua's answer — {0, day} admitted, {scope index from 1, what,
// retry ms} refused — checking its shape, since Redis is outside data (outside round 60: an
// empty array or an index past the scopes panicked the request).
func admitAnswer(res []any, scopes []Scope) (string, *Denied, error) {
	if len(res) < 2 {
		return "", nil, errNotAdmitAnswer
	}
	idx, ok := res[0].(int64)
	switch {
	case !ok || idx < 0 || idx > int64(len(scopes)):
		return "", nil, errNotAdmitAnswer
	case idx == 0:
		day, ok := res[1].(string)
		if !ok || len(day) != len("2006-01-02") {
			return "", nil, errNotAdmitAnswer
		}
		return day, nil, nil
	}
	what, _ := res[1].(string)
	var ms int64
	if len(res) > 2 {
		ms, _ = res[2].(int64)
	}
	switch what {
	case "rpm", "tpm", "concurrent", "daily_tokens":
	default:
		return "", nil, errNotAdmitAnswer
	}
	if ms < 0 || ms > 2*24*3600*1000 {
		return "", nil, errNotAdmitAnswer
	}
	return "", &Denied{Scope: scopes[idx-1].Name, What: what, RetryAfter: time.Duration(ms) * time.Millisecond}, nil
}

// maxRedisError bounds the text of Redis's error kept in an error (and so in the gateway's
// log lines and a refusal's record): Redis chooses it (outside round 60: a 4 MiB error reply
// made 4 MiB log lines, a request).
const maxRedisError = 256

// redisError is err under what, its text clipped to maxRedisError bytes; errors.Is and As
// still see err.
func redisError(what string, err error) error { return &clippedError{what: what, err: err} }

type clippedError struct {
	what string
	err  error
}

func (e *clippedError) Unwrap() error { return e.err }

func (e *clippedError) Error() string {
	msg := e.err.Error()
	if len(msg) > maxRedisError {
		msg = strings.ToValidUTF8(msg[:maxRedisError], "") + fmt.Sprintf("… (%d bytes)", len(msg))
	}
	return e.what + ": " + msg
}
