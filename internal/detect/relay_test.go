package detect

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/strongroom/strongroom/internal/obs"
	"github.com/strongroom/strongroom/internal/testenv"
)

// memBus is an in-memory Bus for the relay's logic; RedisBus is tested on a real Redis.
type memBus struct {
	mu     sync.Mutex
	cond   *sync.Cond
	recs   [][]byte
	claims map[string]bool
	fail   bool
	drop   func(i int) bool // Publish succeeds, but the i-th record published (0 up) is dropped
	n      int
}

func newMemBus() *memBus {
	b := &memBus{claims: map[string]bool{}}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *memBus) Publish(_ context.Context, recs [][]byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail {
		return errors.New("bus down")
	}
	for _, r := range recs {
		if b.drop == nil || !b.drop(b.n) {
			b.recs = append(b.recs, bytes.Clone(r))
		}
		b.n++
	}
	b.cond.Broadcast()
	return nil
}

func (b *memBus) Read(ctx context.Context, cursor string) (string, [][]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, _ := strconv.Atoi(cursor) // "" is 0: the tests' buses start empty
	if n == len(b.recs) && ctx.Err() == nil {
		stop := context.AfterFunc(ctx, func() { b.mu.Lock(); b.cond.Broadcast(); b.mu.Unlock() })
		t := time.AfterFunc(100*time.Millisecond, func() { b.mu.Lock(); b.cond.Broadcast(); b.mu.Unlock() })
		b.cond.Wait()
		stop()
		t.Stop()
	}
	out := append([][]byte(nil), b.recs[n:]...)
	return strconv.Itoa(len(b.recs)), out, nil
}

func (b *memBus) Claim(_ context.Context, key string, _ time.Duration) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail {
		return false, errors.New("bus down")
	}
	if b.claims[key] {
		return false, nil
	}
	b.claims[key] = true
	return true, nil
}

// sweep is request i of a logit-harvesting sweep: 5 new biased token ids, top-5 logprobs.
func sweep(i int) obs.Observation {
	bias := map[string]float64{}
	for k := range 5 {
		bias[strconv.Itoa(i*5+k)] = 100
	}
	return obs.Observation{TS: time.Now(), Principal: "mallory", IP: "198.51.100.7", Model: "m",
		Prompt: []byte("the secret prompt text"), Logprobs: true, TopLogprobs: 5, LogitBias: bias}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func countKind(a *seqAudit, kind string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, e := range a.evs {
		if string(e.Kind) == kind {
			n++
		}
	}
	return n
}

// TestSharedDetectionAcrossReplicas: a sweep spread over two replicas by a load balancer
// — each sees half, 10 biased ids, below the threshold of 20 — is detected by both
// replicas' engines through the bus; both strip logprobs at once, and the alert is
// recorded once. Prompts and client addresses never travel on the bus.
func TestSharedDetectionAcrossReplicas(t *testing.T) {
	bus := newMemBus()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var rs []*Responder
	var auds []*seqAudit
	for range 2 {
		a := &seqAudit{}
		r := NewResponder(New(Config{HarvestTokens: 20}), ResponderConfig{Audit: a, Duration: time.Hour, Bus: bus})
		runResponder(t, ctx, r)
		rs, auds = append(rs, r), append(auds, a)
	}
	for i := range 4 {
		rs[i%2].Observe(sweep(i))
	}
	for i, r := range rs {
		waitFor(t, "replica "+strconv.Itoa(i)+" to strip logprobs", func() bool { a, _ := r.Sanction("mallory"); return a == "strip_logprobs" })
	}
	rs[0].Wait()
	rs[1].Wait()
	if n := countKind(auds[0], "detect.alert") + countKind(auds[1], "detect.alert"); n != 1 {
		t.Fatalf("alert recorded %d times across replicas, want once", n)
	}
	bus.mu.Lock()
	defer bus.mu.Unlock()
	if len(bus.recs) != 4 {
		t.Fatalf("%d records on the bus, want 4", len(bus.recs))
	}
	for _, rec := range bus.recs {
		if bytes.Contains(rec, []byte("secret prompt")) || bytes.Contains(rec, []byte("198.51.100")) {
			t.Fatalf("prompt or address on the bus: %s", rec)
		}
	}
}

// TestStartingReplicaReplaysHistory: a replica that starts after others have served part
// of a sweep replays the bus's history into its engine, so the rest of the sweep alerts
// there as it would have on the others; history alone (an attacker the running replicas
// already handled) is not alerted again.
func TestStartingReplicaReplaysHistory(t *testing.T) {
	bus := newMemBus()
	earlier := time.Now().Add(-time.Minute)
	publish := func(o obs.Observation) {
		r := FromObservation(o)
		w := wireObs{Req: r, F: ExtractFeatures(&r)}
		w.Req.Prompt, w.Req.IP = "", ""
		b, _ := json.Marshal(&w)
		bus.Publish(context.Background(), [][]byte{b})
	}
	for i := range 4 { // handled before: a whole sweep by another principal
		o := sweep(i)
		o.TS, o.Principal = earlier, "old-mallory"
		publish(o)
	}
	for i := range 3 { // the first three requests of mallory's sweep
		o := sweep(i)
		o.TS = earlier
		publish(o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	aud := &seqAudit{}
	r := NewResponder(New(Config{HarvestTokens: 20}), ResponderConfig{Audit: aud, Duration: time.Hour, Bus: bus})
	runResponder(t, ctx, r)
	waitFor(t, "history replayed", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.index == 7 })
	if a, _ := r.Sanction("old-mallory"); a != "" || countKind(aud, "detect.alert") != 0 {
		t.Fatalf("history re-alerted: sanction %q, %s", a, aud.kinds())
	}
	r.Observe(sweep(3))
	waitFor(t, "the sweep's fourth request to alert", func() bool { a, _ := r.Sanction("mallory"); return a == "strip_logprobs" })
	r.Wait()
	if n := countKind(aud, "detect.alert"); n != 1 {
		t.Fatalf("%d alerts recorded, want 1 (mallory)", n)
	}
}

// TestLocalReplicasMissSplitSweep is the baseline of the test above: without a bus the
// same split sweep raises nothing on either replica.
func TestLocalReplicasMissSplitSweep(t *testing.T) {
	var rs []*Responder
	for range 2 {
		rs = append(rs, NewResponder(New(Config{HarvestTokens: 20}), ResponderConfig{Audit: &seqAudit{}, Duration: time.Hour}))
	}
	for i := range 4 {
		rs[i%2].Observe(sweep(i))
	}
	for _, r := range rs {
		if a, _ := r.Sanction("mallory"); a != "" {
			t.Fatalf("a replica saw enough alone: %q", a)
		}
	}
}

// TestBusDownDetectsLocally: with the bus failing, a replica detects on its own traffic
// and records its alerts; when the bus is back it shares again.
func TestBusDownDetectsLocally(t *testing.T) {
	bus := newMemBus()
	bus.fail = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	aud := &seqAudit{}
	reg := prometheus.NewRegistry()
	r := NewResponder(New(Config{HarvestTokens: 20}), ResponderConfig{Audit: aud, Duration: time.Hour, Bus: bus, Metrics: reg})
	degraded := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "strongroom_detect_bus_degraded" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no strongroom_detect_bus_degraded metric")
		return 0
	}
	if degraded() != 0 {
		t.Fatal("degraded before any failure")
	}
	runResponder(t, ctx, r)
	for i := range 4 {
		r.Observe(sweep(i))
		if i == 0 {
			waitFor(t, "degraded mode", r.Degraded)
		}
	}
	if degraded() != 1 {
		t.Fatal("metric does not show the degraded mode")
	}
	waitFor(t, "local detection", func() bool { a, _ := r.Sanction("mallory"); return a == "strip_logprobs" })
	r.Wait()
	if n := countKind(aud, "detect.alert"); n != 1 {
		t.Fatalf("%d alerts recorded, want 1", n)
	}
	bus.mu.Lock()
	bus.fail = false
	bus.mu.Unlock()
	waitFor(t, "shared mode again", func() bool { return !r.Degraded() })
}

// TestRedisBus runs RedisBus against a real Redis (STRONGROOM_TEST_REDIS, started by
// scripts/test): records come back in order after the cursor, a reader that starts late
// sees only what follows, and a claim is won once.
func TestRedisBus(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	prefix := "test:" + strings.ReplaceAll(t.Name(), "/", "_") + ":" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	defer rdb.Del(ctx, prefix+"obs")
	b := newTestBus(t, rdb, prefix, testBusKey)
	if err := b.Publish(ctx, [][]byte{[]byte("old")}); err != nil {
		t.Fatal(err)
	}
	// A reader starting now begins with the history.
	cur, recs, err := b.Read(ctx, "")
	if err != nil || len(recs) != 1 || string(recs[0]) != "old" {
		t.Fatalf("first read: %q, %v", recs, err)
	}
	if _, recs, _ := b.Read(ctx, cur); len(recs) != 0 {
		t.Fatalf("read at the end: %q", recs)
	}
	if err := b.Publish(ctx, [][]byte{[]byte("a"), []byte("b")}); err != nil {
		t.Fatal(err)
	}
	cur, recs, err = b.Read(ctx, cur)
	if err != nil || len(recs) != 2 || string(recs[0]) != "a" || string(recs[1]) != "b" {
		t.Fatalf("read: %q, %v", recs, err)
	}
	b.Publish(ctx, [][]byte{[]byte("c")})
	if _, recs, _ = b.Read(ctx, cur); len(recs) != 1 || string(recs[0]) != "c" {
		t.Fatalf("read after cursor: %q", recs)
	}
	if err := b.Publish(ctx, nil); err != nil {
		t.Fatalf("ping: %v", err)
	}
	key := "alert:logit_harvest:" + prefix
	defer rdb.Del(ctx, prefix+"claim:"+b.seal.claimName(key))
	if won, err := b.Claim(ctx, key, time.Minute); !won || err != nil {
		t.Fatalf("first claim: %v, %v", won, err)
	}
	if won, err := b.Claim(ctx, key, time.Minute); won || err != nil {
		t.Fatalf("second claim: %v, %v", won, err)
	}
	// A Redis that is gone is an error, not an empty stream.
	dead := newTestBus(t, redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1}), prefix, testBusKey)
	if err := dead.Publish(ctx, [][]byte{[]byte("x")}); err == nil {
		t.Fatal("publish to a dead Redis succeeded")
	}
	if _, err := dead.Claim(ctx, key, time.Minute); err == nil {
		t.Fatal("claim on a dead Redis succeeded")
	}
}

// countBus accepts and counts records; reads wait for ctx (nothing comes back).
type countBus struct{ n atomic.Int64 }

func (c *countBus) Publish(_ context.Context, recs [][]byte) error {
	c.n.Add(int64(len(recs)))
	return nil
}
func (c *countBus) Read(ctx context.Context, cur string) (string, [][]byte, error) {
	<-ctx.Done()
	return cur, nil, ctx.Err()
}
func (c *countBus) Claim(context.Context, string, time.Duration) (bool, error) { return true, nil }

func observations(b *testing.B) []obs.Observation {
	reqs, _ := Simulate("all", 1, 1)
	out := make([]obs.Observation, len(reqs))
	for i, r := range reqs {
		out[i] = obs.Observation{TS: r.TS, Principal: r.Principal, IP: r.IP, Model: r.Model, Endpoint: r.Endpoint, Prompt: []byte(r.Prompt),
			MaxTokens: r.Params.MaxTokens, Logprobs: r.Params.Logprobs, TopLogprobs: r.Params.TopLogprobs, LogitBias: r.Params.LogitBias,
			N: r.Params.N, PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens}
	}
	return out
}

// BenchmarkRelay: what the gateway's request path pays per request for detection —
// locally (the whole engine) and with a bus (features and a queue hand-off) — and, with a
// real Redis, the whole shared path: process CPU per request for publishing every request
// to the stream, reading it back and running the engine on it.
func BenchmarkRelay(b *testing.B) {
	obs := observations(b)
	silent := func() *seqAudit { return &seqAudit{} }
	b.Run("local", func(b *testing.B) {
		r := NewResponder(New(Config{}), ResponderConfig{Audit: silent(), Duration: time.Hour})
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r.Observe(obs[i%len(obs)])
		}
	})
	b.Run("shared-hotpath", func(b *testing.B) {
		// The queue is drained without publishing: this is the request path's share.
		r := NewResponder(New(Config{}), ResponderConfig{Audit: silent(), Duration: time.Hour, Bus: &countBus{}})
		done := make(chan struct{})
		go func() {
			for {
				select {
				case <-r.relay.out:
				case <-done:
					return
				}
			}
		}()
		defer close(done)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r.Observe(obs[i%len(obs)])
		}
		b.ReportMetric(float64(r.relay.dropped.Load())/float64(b.N), "overflow/req")
	})
	b.Run("shared-redis-total", func(b *testing.B) {
		url := os.Getenv("STRONGROOM_TEST_REDIS")
		if url == "" {
			b.Skip("STRONGROOM_TEST_REDIS not set")
		}
		opt, _ := redis.ParseURL(url)
		rdb := redis.NewClient(opt)
		defer rdb.Close()
		prefix := "bench:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
		defer rdb.Del(context.Background(), prefix+"obs")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		eng := New(Config{})
		r := NewResponder(eng, ResponderConfig{Audit: silent(), Duration: time.Hour, Bus: newTestBus(b, rdb, prefix, testBusKey)})
		go r.Run(ctx, time.Hour)
		cpu0 := testenv.CPUTime()
		b.ResetTimer()
		for i := range b.N {
			for len(r.relay.out) > relayQueue/2 { // a gateway's pace, not a burst of b.N
				time.Sleep(100 * time.Microsecond)
			}
			r.Observe(obs[i%len(obs)])
		}
		if r.relay.dropped.Load() > 0 || r.Degraded() {
			b.Fatal("queue overflowed or bus failed")
		}
		for {
			r.mu.Lock()
			done := r.index >= b.N
			r.mu.Unlock()
			if done {
				break
			}
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		b.ReportMetric(float64((testenv.CPUTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/req")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	})
}

// FuzzBusRecord: whatever another process writes to the bus, decoding refuses it or the
// engine takes it without panicking.
func FuzzBusRecord(f *testing.F) {
	for i := range 3 {
		r := FromObservation(sweep(i))
		w := wireObs{Req: r, F: ExtractFeatures(&r)}
		b, _ := json.Marshal(&w)
		f.Add(b)
	}
	f.Add([]byte(`{"r":{"ts":"2026-11-27T00:00:00Z","principal":"p","params":{"logit_bias":{"-1":1e308}}},"f":{"len":-1}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := decodeWire(b)
		if err != nil {
			return
		}
		e := New(Config{HarvestTokens: 20, ClusterEvery: 1})
		for i := range 3 {
			e.ObserveFeatures(i, &w.Req, &w.F)
		}
		e.CampaignAlerts(3, w.Req.TS)
	})
}

// runResponder runs r until ctx ends; the test's cleanup waits for Run to return (the
// caller cancels ctx first, in a defer), so no Responder goroutine outlives its test.
func runResponder(t *testing.T, ctx context.Context, r *Responder) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, time.Hour)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// TestOwnRecordsLostStillDetected: a bus that takes a replica's records and gives some or
// none of them back (Redis's entries deleted, the stream rewound or trimmed) does not keep
// the replica from detecting its own traffic: a record overtaken by a later one, or not back
// within echoWait, is detected on here, counted and alerted — and none twice.
func TestOwnRecordsLostStillDetected(t *testing.T) {
	for _, tc := range []struct {
		name string
		drop func(i int) bool
	}{
		{"every other record dropped", func(i int) bool { return i%2 == 0 }},
		{"every record dropped", func(int) bool { return true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus := newMemBus()
			bus.drop = tc.drop
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			aud := &seqAudit{}
			reg := prometheus.NewRegistry()
			r := NewResponder(New(Config{HarvestTokens: 20}), ResponderConfig{Audit: aud, Duration: time.Hour, Bus: bus, Metrics: reg})
			r.relay.echoWait = 200 * time.Millisecond
			runResponder(t, ctx, r)
			for i := range 4 {
				r.Observe(sweep(i))
			}
			waitFor(t, "the sweep's alert", func() bool { a, _ := r.Sanction("mallory"); return a == "strip_logprobs" })
			waitFor(t, "every record detected on once", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.index == 4 })
			r.Wait()
			if n := countKind(aud, "detect.alert"); n != 1 {
				t.Fatalf("%d alerts recorded, want 1", n)
			}
			if got := r.relay.lost.Load(); got < 2 {
				t.Fatalf("%d records counted lost, want the 2 or 4 dropped", got)
			}
			mfs, _ := reg.Gather()
			found := false
			for _, mf := range mfs {
				found = found || mf.GetName() == "strongroom_detect_bus_lost_total" && mf.GetMetric()[0].GetCounter().GetValue() >= 2
			}
			if !found {
				t.Fatal("strongroom_detect_bus_lost_total does not show them")
			}
			// Nothing is left to detect on twice: no record waits, however late it is.
			if late := r.relay.overdue(time.Now().Add(time.Hour)); len(late) != 0 {
				t.Fatalf("%d records still wait to come back after all 4 were detected on", len(late))
			}
			if fresh, _ := r.relay.echoed(1); fresh {
				t.Fatal("record 1, back late, would be detected on again")
			}
		})
	}
}
