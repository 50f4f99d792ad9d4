package detect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Gateway replicas share detection through a Bus: every replica publishes the requests it
// serves and every replica reads everyone's, so that each one's engine sees all traffic
// (a principal spread over replicas by a load balancer, or a hydra campaign's keys, look
// the same as behind one gateway). What travels is a request's Features and parameters —
// hashes and counts, never prompts or client addresses. Each replica imposes the actions
// its engine raises at once; the audit events, shared sanction, incident and webhook come
// from the one replica that claims the alert first, so an alert is recorded once.
//
// When the bus fails, a replica falls back to detecting on its own traffic (and records
// its own alerts) until the bus works again: detection degrades, it does not stop.

// Bus carries observations between gateway replicas.
type Bus interface {
	// Publish appends records to the shared stream, in order.
	Publish(ctx context.Context, recs [][]byte) error
	// Read waits (up to about a second) for records after cursor; "" starts at the
	// oldest record the bus still holds. It returns the cursor to pass next.
	Read(ctx context.Context, cursor string) (next string, recs [][]byte, err error)
	// Claim reports whether this caller is the first to claim key within ttl.
	Claim(ctx context.Context, key string, ttl time.Duration) (bool, error)
}

// wireObs is one request on the bus.
type wireObs struct {
	Req Request  `json:"r"` // Prompt and IP are empty: F holds what detectors need of them
	F   Features `json:"f"`
}

// relay is a Responder's link to the bus.
type relay struct {
	bus      Bus
	started  time.Time // requests before this are history (see consume)
	out      chan wireObs
	degraded atomic.Bool
	dropped  atomic.Int64
}

// relayQueue bounds the observations waiting to be published; beyond it a replica detects
// the overflow on its own.
const relayQueue = 1 << 14

func newRelay(bus Bus, now time.Time) *relay {
	return &relay{bus: bus, started: now, out: make(chan wireObs, relayQueue)}
}

// enqueue hands an observation to the publisher, or reports that it could not.
func (rl *relay) enqueue(w wireObs) bool {
	if rl.degraded.Load() {
		return false
	}
	select {
	case rl.out <- w:
		return true
	default:
		rl.dropped.Add(1)
		return false
	}
}

// Degraded reports whether the responder is detecting on this replica's traffic alone
// because the bus failed.
func (r *Responder) Degraded() bool { return r.relay != nil && r.relay.degraded.Load() }

// observeShared enqueues o for every replica, or detects on it here when the bus is
// unavailable.
func (r *Responder) observeShared(req *Request) {
	w := wireObs{Req: *req, F: ExtractFeatures(req)}
	w.Req.Prompt, w.Req.IP = "", ""
	if !r.relay.enqueue(w) {
		r.observeAlone(w)
	}
}

// observeAlone detects on a request this replica could not share (kept apart so that the
// common path's wireObs stays on the stack).
//
//go:noinline
func (r *Responder) observeAlone(w wireObs) { r.observeLocal(&w.Req, &w.F, actRecord) }

// How observeLocal treats the alerts a request raises: actRecord imposes and records them
// (this replica's own, unshared traffic); actClaim imposes them and records them if this
// replica claims them first; actQuiet does neither (the request predates this replica,
// whose engine is catching up on history that the replicas running then acted on).
type actMode int

const (
	actRecord actMode = iota
	actClaim
	actQuiet
)

// observeLocal runs the engine on one request and acts on its alerts as mode says.
func (r *Responder) observeLocal(req *Request, f *Features, mode actMode) {
	r.mu.Lock()
	idx := r.index
	r.index++
	r.mu.Unlock()
	for _, a := range r.e.ObserveFeatures(idx, req, f) {
		switch mode {
		case actRecord:
			r.act(a)
		case actClaim:
			r.actClaimed(a)
		}
	}
}

// actClaimed imposes a's action here and records it only if this replica claims the alert
// first. A claim that cannot be made (bus down) records it anyway: an alert recorded twice
// is better than one lost.
func (r *Responder) actClaimed(a Alert) {
	if r.relay == nil {
		r.act(a)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	won, err := r.relay.bus.Claim(ctx, claimKey(a), claimTTL)
	if err != nil {
		r.cfg.Log.Error("detect: claiming an alert on the bus; recording it here", "err", err)
	}
	r.actAs(a, won || err != nil)
}

// claimTTL is how long a claim keeps other replicas from recording the same alert: they
// raise it within moments of each other when they have seen the same stream.
const claimTTL = 10 * time.Minute

// claimKey names an alert the same way on every replica. An alert raised by a request
// carries that request's timestamp, which every replica reading the same stream shares
// (and a later, separate alert does not); a campaign alert (raised by the periodic
// clustering, at each replica's own moment) is named by detector and principal alone.
func claimKey(a Alert) string {
	k := "alert:" + a.Detector + ":" + a.Principal
	if a.Index >= 0 {
		k += ":" + strconv.FormatInt(a.TS.UnixNano(), 36)
	}
	return k
}

// publish sends queued observations in batches until ctx ends. A failed batch is detected
// on here, and the relay stays degraded (local detection) until a publish succeeds.
func (r *Responder) publish(ctx context.Context) {
	batch := make([]wireObs, 0, 256)
	recs := make([][]byte, 0, 256)
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		batch, recs = batch[:0], recs[:0]
		select {
		case <-ctx.Done():
			return
		case w := <-r.relay.out:
			batch = append(batch, w)
		case <-retry.C:
			if !r.relay.degraded.Load() {
				continue
			}
			// Probe the bus with an empty batch; success ends the degraded mode.
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := r.relay.bus.Publish(pctx, nil)
			cancel()
			if err == nil {
				r.relay.degraded.Store(false)
				r.cfg.Log.Info("detect: bus is back; detection is shared again")
			}
			continue
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case w := <-r.relay.out:
				batch = append(batch, w)
			default:
				break fill
			}
		}
		for i := range batch {
			b, err := json.Marshal(&batch[i])
			if err != nil {
				continue // not reachable for these types
			}
			recs = append(recs, b)
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := r.relay.bus.Publish(pctx, recs)
		cancel()
		if err != nil {
			if !r.relay.degraded.Swap(true) {
				r.cfg.Log.Error("detect: bus unavailable; detecting on this replica's traffic alone", "err", err)
			}
			for i := range batch {
				r.observeLocal(&batch[i].Req, &batch[i].F, actRecord)
			}
		}
	}
}

// consume reads every replica's observations from the bus and detects on them until ctx
// ends. It starts with the history the bus still holds, so that a replica that starts (or
// restarts, in a rolling deploy) knows what the others saw: requests served before its
// responder was created only feed its engine; alerts they raise were the running
// replicas' to act on.
func (r *Responder) consume(ctx context.Context) {
	cursor := ""
	failing := false
	for ctx.Err() == nil {
		next, recs, err := r.relay.bus.Read(ctx, cursor)
		if err != nil {
			if ctx.Err() == nil {
				if !failing { // once per outage, not once a second
					r.cfg.Log.Error("detect: reading the bus", "err", err)
				}
				failing = true
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		if failing {
			r.cfg.Log.Info("detect: reading the bus again")
			failing = false
		}
		cursor = next
		for _, b := range recs {
			w, err := decodeWire(b)
			if err != nil {
				r.cfg.Log.Warn("detect: malformed record on the bus", "err", err)
				continue
			}
			mode := actClaim
			if w.Req.TS.Before(r.relay.started) {
				mode = actQuiet
			}
			r.observeLocal(&w.Req, &w.F, mode)
		}
	}
}

// decodeWire parses one record from the bus (outside data: another process wrote it).
func decodeWire(b []byte) (wireObs, error) {
	var w wireObs
	if err := json.Unmarshal(b, &w); err != nil {
		return w, fmt.Errorf("detect bus: record: %w", err)
	}
	switch {
	case w.Req.Principal == "":
		return w, errors.New("detect bus: record without a principal")
	case w.Req.TS.IsZero():
		return w, errors.New("detect bus: record without a timestamp")
	case w.F.PromptLen < 0 || w.F.TopicWords < 0 || w.Req.PromptTokens < 0 || w.Req.CompletionTokens < 0:
		return w, errors.New("detect bus: record with a negative count")
	}
	return w, nil
}

// RedisBus is a Bus on a Redis stream (observations) and SET NX keys (claims). Its records
// are sealed and its claims' names keyed (busseal.go).
type RedisBus struct {
	rdb    redis.UniversalClient
	prefix string
	maxLen int64
	seal   *sealer
}

// NewRedisBus uses keys under prefix (e.g. "strongroom:detect:"); the stream keeps about
// the last 100,000 observations (a starting replica replays them: about a second). key (32
// bytes, the same in every replica) seals the records; log gets the ALERT lines of records
// refused.
func NewRedisBus(rdb redis.UniversalClient, prefix string, key []byte, log *slog.Logger) (*RedisBus, error) {
	b := &RedisBus{rdb: rdb, prefix: prefix, maxLen: 100_000}
	var err error
	if b.seal, err = newSealer(key, b.stream(), log); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *RedisBus) stream() string { return b.prefix + "obs" }

// Rejected counts the records Read refused (not sealed under the key, or repeated).
func (b *RedisBus) Rejected() int64 { return b.seal.rejected.Load() }

// Publish implements Bus; with no records it checks that Redis answers.
func (b *RedisBus) Publish(ctx context.Context, recs [][]byte) error {
	if len(recs) == 0 {
		return b.rdb.Ping(ctx).Err()
	}
	now := time.Now()
	_, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, rec := range recs {
			p.XAdd(ctx, &redis.XAddArgs{Stream: b.stream(), MaxLen: b.maxLen, Approx: true, Values: []any{"o", b.seal.seal(rec, now)}})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("detect bus: publish: %w", err)
	}
	return nil
}

// Read implements Bus.
func (b *RedisBus) Read(ctx context.Context, cursor string) (string, [][]byte, error) {
	if cursor == "" {
		cursor = "0-0" // the oldest entry still in the stream
	}
	res, err := b.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{b.stream(), cursor}, Count: 1024, Block: time.Second}).Result()
	if errors.Is(err, redis.Nil) {
		return cursor, nil, nil
	}
	if err != nil {
		return cursor, nil, fmt.Errorf("detect bus: read: %w", err)
	}
	var recs [][]byte
	for _, s := range res {
		for _, m := range s.Messages {
			cursor = m.ID
			v, _ := m.Values["o"].(string)
			plain, err := b.seal.open([]byte(v), m.ID, time.Now())
			if err != nil {
				b.seal.refuse(m.ID, err)
				continue
			}
			recs = append(recs, plain)
		}
	}
	return cursor, recs, nil
}

// Claim implements Bus.
func (b *RedisBus) Claim(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	ok, err := b.rdb.SetNX(ctx, b.prefix+"claim:"+b.seal.claimName(key), time.Now().UTC().Format(time.RFC3339Nano), ttl).Result()
	if err != nil {
		return false, fmt.Errorf("detect bus: claim: %w", err)
	}
	return ok, nil
}
