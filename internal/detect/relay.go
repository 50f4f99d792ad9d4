package detect

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/respguard"
	"github.com/strongroom/strongroom/internal/store"
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
	// Src and N name the record: the publishing relay (random) and its number there, 1 up.
	Src string `json:"src,omitempty"`
	N   uint64 `json:"n,omitempty"`
}

// relay is a Responder's link to the bus.
type relay struct {
	bus      Bus
	started  time.Time // requests before this are history (see consume)
	out      chan wireObs
	degraded atomic.Bool
	dropped  atomic.Int64
	lost     atomic.Int64 // own records that never came back, detected on here instead
	gaps     atomic.Int64 // other replicas' records found missing or repeated
	// unkeptWarn: the ALERT that own records were let go unread was given (once a process).
	unkeptWarn atomic.Bool
	sources    map[string]source
	gapWarn    every // the ALERT line of gaps in other replicas' records

	// A replica with a bus detects its own traffic as it reads it back. So that what Redis
	// drops, hides or delays (an entry deleted, the stream rewound or trimmed) is still
	// detected here, it keeps what it published until the record comes back: a record of
	// its own that comes back after a later one, or not within echoWait, is taken from
	// here instead (and counted, and alerted).
	id       string
	seq      uint64 // the last N published (publish's goroutine)
	mu       sync.Mutex
	pending  []sent // published, not yet back, in order
	handled  uint64 // the last N detected on (read back or taken from pending)
	echoWait time.Duration
}

// sent is a published record waiting to come back, as encoded (bytes the collector does
// not scan: a busy replica holds thousands); decoded only if it is lost.
type sent struct {
	n   uint64
	rec []byte
	at  time.Time
}

// relayQueue bounds the observations waiting to be published; beyond it a replica detects
// the overflow on its own. The records waiting to come back are bounded alike.
const relayQueue = 1 << 14

// defaultEchoWait is how long a published record may take to come back before it is
// detected on here.
const defaultEchoWait = 10 * time.Second

func newRelay(bus Bus, now time.Time) *relay {
	var id [8]byte
	rand.Read(id[:])
	return &relay{bus: bus, started: now, out: make(chan wireObs, relayQueue), id: hex.EncodeToString(id[:]), echoWait: defaultEchoWait,
		sources: map[string]source{}}
}

// sending keeps batch (about to be published at now) until its records come back — kept
// before it is sent, so that a record read back before Publish returned is known; what
// overflows the bound is returned, to be detected on here.
func (rl *relay) sending(batch []wireObs, recs [][]byte, now time.Time) (unkept int) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	for i := range batch {
		rl.pending = append(rl.pending, sent{batch[i].N, recs[i], now})
	}
	// Past the bound the oldest are let go unread (decoding them here would slow a reader
	// that lags further still): echoWait at maxPending / echoWait records a second.
	if n := len(rl.pending) - maxPending; n > 0 {
		clear(rl.pending[:n])
		rl.pending = rl.pending[n:]
		return n
	}
	return 0
}

// maxPending bounds the records kept until they come back (~0.5 KiB each).
const maxPending = 1 << 16

// inOrder notes record n of source src (read at now) and reports whether it follows the
// last one read from src: records of one relay are published in order, so a gap means some
// were dropped. Sources unheard of for 10 minutes are forgotten (consume's goroutine).
func (rl *relay) inOrder(src string, n uint64, now time.Time) bool {
	if src == "" || n == 0 {
		return true // a record of a replica that does not number them
	}
	s, known := rl.sources[src]
	ok := !known || n == s.last+1
	if !known {
		for k, v := range rl.sources {
			if now.Sub(v.seen) > 10*time.Minute {
				delete(rl.sources, k)
			}
		}
	}
	if !ok {
		rl.gaps.Add(1)
	}
	rl.sources[src] = source{last: max(n, s.last), seen: now}
	return ok
}

// source is what a reader knows of another relay's records.
type source struct {
	last uint64
	seen time.Time
}

// unsent drops batch, which could not be published, and returns what of it is to be
// detected on here: the records not read back already (Redis may have taken some before
// it failed). One that comes back later is not detected on again.
func (rl *relay) unsent(batch []wireObs) []wireObs {
	if len(batch) == 0 {
		return nil
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	i := 0
	for i < len(batch) && batch[i].N <= rl.handled {
		i++
	}
	first, last := batch[0].N, batch[len(batch)-1].N
	kept := rl.pending[:0]
	for _, p := range rl.pending {
		if p.n < first || p.n > last {
			kept = append(kept, p)
		}
	}
	rl.pending = kept
	rl.handled = max(rl.handled, last)
	return batch[i:]
}

// echoed is an own record read back: it reports whether it is still to be detected on,
// and returns the earlier ones it overtook (dropped by Redis), to be detected on here.
func (rl *relay) echoed(n uint64) (fresh bool, missed []wireObs) {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if n <= rl.handled {
		return false, nil // taken from pending already
	}
	missed = rl.takeLocked(n - 1)
	if len(rl.pending) > 0 && rl.pending[0].n == n {
		rl.pending[0] = sent{}
		rl.pending = rl.pending[1:]
	}
	rl.handled = n
	return true, missed
}

// overdue returns the records published more than echoWait before now and not back.
func (rl *relay) overdue(now time.Time) []wireObs {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	i := 0
	for i < len(rl.pending) && now.Sub(rl.pending[i].at) > rl.echoWait {
		i++
	}
	if i == 0 {
		return nil
	}
	return rl.takeLocked(rl.pending[i-1].n)
}

// takeLocked removes and returns the pending records up to N n. mu is held.
func (rl *relay) takeLocked(n uint64) []wireObs {
	i := 0
	for i < len(rl.pending) && rl.pending[i].n <= n {
		i++
	}
	if i == 0 {
		return nil
	}
	last := rl.pending[i-1].n
	out := make([]wireObs, 0, i)
	for j := range i {
		if w, err := decodeWire(rl.pending[j].rec); err == nil { // its own encoding: always
			out = append(out, w)
		}
		rl.pending[j] = sent{}
	}
	rl.handled = max(rl.handled, last)
	rl.pending = rl.pending[i:]
	rl.lost.Add(int64(i))
	return out
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
	if !won && err == nil {
		r.followClaim(a, r.cfg.Now())
	}
}

// maxClaimChecks bounds the lost claims followed at once; past it an alert whose claim was
// lost is recorded here at once (twice rather than lost).
const maxClaimChecks = 1024

// followClaim makes sure the alert a, whose claim another replica won at lost, is recorded:
// it looks in the shared audit index for the winner's record of it (at a quarter, a half
// and the whole of ClaimCheck) and records it here if none comes. A claim is Redis's
// answer, and a Redis that answered every claim "taken" (outside round 60: the attacker is
// the server) had left every alert unrecorded — sanctioned in each process's memory only,
// with no ALERT line, audit event, stored sanction or incident; so had a winner that died
// between its claim and its record.
func (r *Responder) followClaim(a Alert, lost time.Time) {
	if r.cfg.Incidents == nil {
		return
	}
	if r.checks.Add(1) > maxClaimChecks {
		r.checks.Add(-1)
		r.recordUnclaimed(a, "more lost claims than are followed at once")
		return
	}
	go func() {
		defer r.checks.Add(-1)
		since := lost.Add(-claimSlack)
		c := r.cfg.ClaimCheck
		for _, wait := range []time.Duration{c / 4, c / 4, c / 2} { // looks at c/4, c/2, c
			time.Sleep(wait)
			if r.recordedSince(a, since) {
				return
			}
		}
		r.recordUnclaimed(a, "the replica that claimed it has not recorded it")
	}()
}

// claimSlack: a winner's record of an alert is looked for from this long before the claim
// was lost (the replicas' clocks, and the winner's record made before the loser's claim).
const claimSlack = 30 * time.Second

// recordedSince reports whether the shared audit index holds a detector alert on a's
// principal by a's detector since since. An index that cannot be read counts as not.
func (r *Responder) recordedSince(a Alert, since time.Time) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := r.cfg.Incidents.SearchAudit(ctx, store.AuditQuery{Principal: "strongroom/detect", Kind: string(audit.KindDetectAlert), Since: since, Limit: 1000})
	if err != nil {
		return false
	}
	for _, e := range evs {
		var ev audit.Event
		if json.Unmarshal(e.Raw, &ev) == nil && ev.Subject["principal"] == a.Principal && ev.Fields["detector"] == a.Detector {
			return true
		}
	}
	return false
}

// recordUnclaimed records a here though another replica holds its claim, with an ALERT.
func (r *Responder) recordUnclaimed(a Alert, why string) {
	r.cfg.Log.Error("ALERT detect bus: an alert another replica claimed is not on the record ("+why+"; Redis may have answered the claim falsely); recording it here",
		"principal", a.Principal, "detector", a.Detector)
	r.actAs(a, true)
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
			r.detectLost(r.relay.overdue(time.Now()), "did not come back within "+r.relay.echoWait.String())
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
		kept := batch[:0]
		for i := range batch {
			batch[i].Src, batch[i].N = r.relay.id, r.relay.seq+1
			b, err := json.Marshal(&batch[i])
			if err != nil {
				continue // not reachable for these types
			}
			r.relay.seq++
			kept = append(kept, batch[i])
			recs = append(recs, b)
		}
		batch = kept
		if n := r.relay.sending(batch, recs, time.Now()); n > 0 && r.relay.unkeptWarn.CompareAndSwap(false, true) {
			r.cfg.Log.Error("ALERT detect bus: this replica's reader lags more than 65,536 of its own records behind; those past it are no longer kept to be detected on here if Redis drops them",
				"records", n)
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := r.relay.bus.Publish(pctx, recs)
		cancel()
		if err != nil {
			if !r.relay.degraded.Swap(true) {
				r.cfg.Log.Error("detect: bus unavailable; detecting on this replica's traffic alone", "err", err)
			}
			here := r.relay.unsent(batch)
			for i := range here {
				r.observeLocal(&here[i].Req, &here[i].F, actRecord)
			}
		}
	}
}

// detectLost detects here on own records that Redis did not give back (why says how they
// were missed), records their alerts, and says so.
func (r *Responder) detectLost(ws []wireObs, why string) {
	if len(ws) == 0 {
		return
	}
	r.cfg.Log.Error("ALERT detect bus: records this replica published "+why+" (someone with access to Redis deleted, trimmed or hid them, or it lags); detecting on them here",
		"records", len(ws), "lost_total", r.relay.lost.Load())
	for i := range ws {
		r.observeLocal(&ws[i].Req, &ws[i].F, actRecord)
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
			if w.Src == r.relay.id {
				fresh, missed := r.relay.echoed(w.N)
				r.detectLost(missed, "came back out of order, or not at all, before a later one")
				if !fresh {
					continue
				}
			} else if now := time.Now(); !r.relay.inOrder(w.Src, w.N, now) && r.relay.gapWarn.due(now, busWarnEvery) {
				// (at most every busWarnEvery: a stream with every other record deleted)
				r.cfg.Log.Error("ALERT detect bus: records another replica published are missing or repeated (someone with access to Redis deleted, trimmed or hid them): this replica's detection missed that replica's traffic",
					"replica", w.Src, "record", w.N, "gaps_total", r.relay.gaps.Load())
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
	rdb        redis.UniversalClient
	prefix     string
	maxLen     int64
	seal       *sealer
	rewindLook every // Read's question whether the stream was rewound
	bellMu     sync.Mutex
	bell       <-chan struct{} // publishers ring it after each batch (ring)
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
		p.Publish(ctx, b.prefix+"bell", "") // the readers' wake-up (Read)
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
	// XREAD would hand go-redis each entry whole (a map sized to all its fields: someone
	// who can write Redis made 14 MiB of entries cost a reader 184 MiB): read.lua returns
	// only each entry's record, bounded. It does not block: a reader waits for a
	// publisher's ring on the bell channel (a message's cost is its size, whoever sends it)
	// or busPoll, whichever comes first, for up to a second.
	bell := b.ring(ctx)
	for len(bell) > 0 { // rings for records this read takes (a busy reader never waits)
		<-bell
	}
	var res []any
	for deadline := time.Now().Add(time.Second); ; {
		var err error
		res, err = readScript.Run(ctx, b.rdb, []string{b.stream()}, cursor, busReadCount, busRecordMax, busReadBytes).Slice()
		if err != nil {
			return cursor, nil, fmt.Errorf("detect bus: read: %w", err)
		}
		if len(res) > 0 || time.Now().After(deadline) {
			break
		}
		t := time.NewTimer(busPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return cursor, nil, ctx.Err()
		case <-bell:
			for len(bell) > 0 { // one look answers every ring so far
				<-bell
			}
		case <-t.C:
		}
		t.Stop()
	}
	if len(res) == 0 {
		if b.rewound(ctx, cursor) {
			return "", nil, nil // from the oldest entry again: what was read is refused as repeated
		}
		return cursor, nil, nil
	}
	var recs [][]byte
	now := time.Now()
	for i := 0; i+1 < len(res); i += 2 {
		id, _ := res[i].(string)
		v, _ := res[i+1].(string)
		cursor = id
		plain, err := b.seal.open([]byte(v), id, now)
		if err != nil {
			b.seal.refuse(id, err)
			continue
		}
		recs = append(recs, plain)
	}
	return cursor, recs, nil
}

// What a read takes: up to busReadCount entries, records up to busRecordMax bytes (a
// request's record is under 2 KiB; a logit_bias of the most ids a route allows, a few
// tens), and at most busReadBytes of records together — within respguard.Default's 16 MiB
// a reply, which had refused a read of 256 records of 256 KiB (64 MiB) that someone with
// write access to Redis put in the stream, and the reader then stalled at them.
const (
	busReadCount = 256
	busRecordMax = 256 << 10
	busReadBytes = 8 << 20
	busPoll      = 50 * time.Millisecond
)

// ring is the bell's channel, subscribed at the first read until ctx ends (respguard.Subscribe:
// go-redis's own Channel() reader panicked on a message of a shape it did not expect).
func (b *RedisBus) ring(ctx context.Context) <-chan struct{} {
	b.bellMu.Lock()
	defer b.bellMu.Unlock()
	if b.bell == nil {
		bell := make(chan struct{}, 16)
		go respguard.Subscribe(ctx, b.rdb, b.prefix+"bell", b.seal.log, func(string) {
			select {
			case bell <- struct{}{}:
			default: // rung already: one look answers every ring so far
			}
		})
		b.bell = bell
	}
	return b.bell
}

//go:embed read.lua
var readLua string

var readScript = redis.NewScript(readLua)

// rewound reports whether the stream's last id is now below cursor: someone moved the
// stream's id ahead (XSETID) and deleted it, so that every entry after is named below
// every reader's cursor — no replica would read a record again, its own included, and
// nothing would show it. Looked at, when a read found nothing, at most every
// busRewindEvery.
func (b *RedisBus) rewound(ctx context.Context, cursor string) bool {
	if !b.rewindLook.due(time.Now(), busRewindEvery) {
		return false
	}
	info, err := b.rdb.XInfoStream(ctx, b.stream()).Result()
	if err != nil {
		return false // no stream yet, or Redis unavailable (the publisher sees that)
	}
	if !idBefore(info.LastGeneratedID, cursor) {
		return false
	}
	n := b.seal.rejected.Add(1)
	b.seal.log.Error("ALERT detect bus: the stream was rewound below this replica's cursor (someone with access to Redis moved its id and deleted it); reading it from its oldest entry again",
		"stream", b.stream(), "cursor", cursor, "last_id", info.LastGeneratedID, "refused_total", n)
	return true
}

// busRewindEvery bounds how often an idle reader asks Redis whether its stream was rewound.
const busRewindEvery = 5 * time.Second

// idBefore reports whether stream entry id a is before b.
func idBefore(a, b string) bool {
	am, as, ok1 := parseID(a)
	bm, bs, ok2 := parseID(b)
	return ok1 && ok2 && (am < bm || am == bm && as < bs)
}

// Claim implements Bus.
func (b *RedisBus) Claim(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	ok, err := b.rdb.SetNX(ctx, b.prefix+"claim:"+b.seal.claimName(key), time.Now().UTC().Format(time.RFC3339Nano), ttl).Result()
	if err != nil {
		return false, fmt.Errorf("detect bus: claim: %w", err)
	}
	return ok, nil
}
