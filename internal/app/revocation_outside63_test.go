package app

// Outside round 63: the sealed key-revocation announcements on Redis (claim A).

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// o63Buf is a log sink safe for concurrent writers.
type o63Buf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *o63Buf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *o63Buf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// o63Counting counts the store reads of API keys, by id: a read is what a dropped cache
// entry costs at the key's next use.
type o63Counting struct {
	store.Store
	mu    sync.Mutex
	reads map[string]int
}

func (c *o63Counting) GetAPIKey(ctx context.Context, id string) (store.APIKey, error) {
	c.mu.Lock()
	c.reads[id]++
	c.mu.Unlock()
	return c.Store.GetAPIKey(ctx, id)
}

func (c *o63Counting) n(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads[id]
}

type o63Env struct {
	a     *App
	log   *o63Buf
	st    *o63Counting
	rdb   *redis.Client
	ch    string
	call  func(bearer string) int
	watch time.Duration
}

// o63Open: a data directory with gateway.redis_url on the test Redis (a prefix of its
// own), opened with a log the test reads, its key reads counted, a gateway served.
func o63Open(t *testing.T, ctx context.Context, watch time.Duration) *o63Env {
	t.Helper()
	redisURL := testenv.Get(t, "STRONGROOM_TEST_REDIS")
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, config.FileName)
	c, err := config.ReadRaw(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	c.Gateway.RedisURL, c.Gateway.RedisPrefix = redisURL, fmt.Sprintf("o63-%d:", time.Now().UnixNano())
	if err := config.Write(cfgPath, c); err != nil {
		t.Fatal(err)
	}
	buf := &o63Buf{}
	a, err := Open(ctx, dir, "", slog.New(slog.NewTextHandler(buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	st := &o63Counting{Store: a.Store, reads: map[string]int{}}
	a.Store = st // before APIKeys is built: the gateway's key cache reads through it
	if watch > 0 {
		a.KeyWatchInterval = watch
	}
	call := serveGateway(t, ctx, a)
	rdb, err := a.Redis()
	if err != nil {
		t.Fatal(err)
	}
	e := &o63Env{a: a, log: buf, st: st, rdb: rdb, ch: a.revocationChannel(), call: call, watch: watch}
	deadline := time.Now().Add(5 * time.Second)
	for { // the gateway's subscription is up
		n, err := rdb.PubSubNumSub(ctx, e.ch).Result()
		if err == nil && n[e.ch] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the gateway never subscribed to " + e.ch)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return e
}

// key makes principal id (role researcher) and an API key of it, used once (cached).
func (e *o63Env) key(t *testing.T, ctx context.Context, principal string) (string, store.APIKey) {
	t.Helper()
	if err := e.a.AddPrincipal(ctx, store.Principal{ID: principal, Tenant: "t", Country: "US", Roles: []string{"researcher"}}); err != nil {
		t.Fatal(err)
	}
	tok, rec, err := e.a.CreateKey(ctx, principal, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := e.call(tok); s != 200 {
		t.Fatalf("a fresh key: %d", s)
	}
	return tok, rec
}

// sentinel publishes a message that cannot open and waits until the gateway has counted it:
// every message published before it has been handled.
func (e *o63Env) sentinel(t *testing.T, ctx context.Context) {
	t.Helper()
	before := testutil.ToFloat64(e.a.revocationsRejected)
	if err := e.rdb.Publish(ctx, e.ch, "sentinel").Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(e.a.revocationsRejected) <= before {
		if time.Now().After(deadline) {
			t.Fatal("the gateway did not count the sentinel announcement within 5 s (its subscription is down?)")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// capture returns the next message published on the channel while f runs.
func (e *o63Env) capture(t *testing.T, ctx context.Context, f func()) []byte {
	t.Helper()
	sub := e.rdb.Subscribe(ctx, e.ch)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	f()
	select {
	case m := <-sub.Channel():
		return []byte(m.Payload)
	case <-time.After(5 * time.Second):
		t.Fatal("no announcement published")
	}
	return nil
}

// o63PublicLog is every entry bundle (and batch bundle) the control plane's /log/ serves:
// what anyone who can reach the transparency log reads.
func o63PublicLog(t *testing.T, a *App) []byte {
	t.Helper()
	srv := httptest.NewServer(http.StripPrefix("/log", a.AuditLog.Handler()))
	defer srv.Close()
	get := func(p string) []byte {
		resp, err := http.Get(srv.URL + "/log/" + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return nil
		}
		return b
	}
	lines := strings.Split(string(get("checkpoint")), "\n")
	if len(lines) < 2 {
		return nil
	}
	size, err := strconv.Atoi(lines[1])
	if err != nil {
		return nil
	}
	var out []byte
	for i := 0; i*256 < size; i++ {
		name := fmt.Sprintf("tile/entries/%03d", i)
		if rest := size - i*256; rest < 256 {
			name += fmt.Sprintf(".p/%d", rest)
		}
		out = append(out, get(name)...)
	}
	for _, m := range regexp.MustCompile(`"bundle":"([0-9a-f]{64})"`).FindAllSubmatch(out, -1) {
		out = append(out, get("batches/"+string(m[1]))...)
	}
	return out
}

// TestOutside63RevocationKeyFromPublicLog: the revocation key is HMAC-SHA256(audit key,
// "strongroom/key-revocations/v1"); the audit log's redactor digests values as
// HMAC-SHA256(audit key, value) and the transparency log is served to anyone. A principal
// with any API key (no role that may detect watermarks: the question is recorded before the
// policy refuses it) asks the control API's watermark detection about the text
// "strongroom/key-revocations/v1"; the "text_hmac" in the public log is then the key. With
// it, someone who reads and publishes on Redis, without the audit key, must still learn no
// revoked key id and make no gateway drop a key.
func TestOutside63RevocationKeyFromPublicLog(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := o63Open(t, ctx, time.Hour) // the store poll out of the way: what Redis does is seen
	_, victim := e.key(t, ctx, "victim")
	live, liveRec := e.key(t, ctx, "bystander")
	mallory, _ := e.key(t, ctx, "mallory")

	// Mallory's question, refused (403) but recorded.
	req := httptest.NewRequest(http.MethodPost, "/v1/watermark/detect", strings.NewReader(`{"text":"`+revocationLabel+`","all_tenants":true}`))
	req.Header.Set("Authorization", "Bearer "+mallory)
	rw := httptest.NewRecorder()
	e.a.WatermarkHandler().ServeHTTP(rw, req)
	t.Logf("watermark detection as mallory: %d", rw.Code)

	// A genuine revocation, announced; Mallory reads Redis.
	sealed := e.capture(t, ctx, func() {
		if err := e.a.RevokeKey(ctx, victim.ID); err != nil {
			t.Fatal(err)
		}
	})

	// Mallory reads the public log and tries every digest in it as the key.
	var leaked []byte
	deadline := time.Now().Add(10 * time.Second)
	for leaked == nil && time.Now().Before(deadline) {
		for _, m := range regexp.MustCompile(`hmac-sha256:([0-9a-f]{64})`).FindAllSubmatch(o63PublicLog(t, e.a), -1) {
			k, _ := hex.DecodeString(string(m[1]))
			b, _ := aes.NewCipher(k)
			g, _ := cipher.NewGCM(b)
			if id, err := openRevocation(g, e.ch, sealed, time.Now()); err == nil && id == victim.ID {
				leaked = k
				break
			}
		}
		if leaked == nil {
			time.Sleep(200 * time.Millisecond)
		}
	}
	if leaked == nil {
		return // the key is not in the public log
	}
	t.Errorf("the revocation key is in the public transparency log (text_hmac of a watermark question by a principal with no role): it opened the genuine announcement, which names revoked key %s", victim.ID)

	// And with it, a forged drop of a live key is taken.
	b, _ := aes.NewCipher(leaked)
	g, _ := cipher.NewGCM(b)
	before := e.st.n(liveRec.ID)
	rejected := testutil.ToFloat64(e.a.revocationsRejected)
	if err := e.rdb.Publish(ctx, e.ch, sealRevocation(g, e.ch, liveRec.ID, time.Now())).Err(); err != nil {
		t.Fatal(err)
	}
	e.sentinel(t, ctx)
	if s := e.call(live); s != 200 {
		t.Fatalf("the live key: %d", s)
	}
	if got := testutil.ToFloat64(e.a.revocationsRejected) - rejected; got == 1 && e.st.n(liveRec.ID) > before {
		t.Errorf("a drop forged with the leaked key was opened (not counted: %v rejected, the sentinel) and emptied live key %s's cache entry: %d store read(s) at its next use",
			got, liveRec.ID, e.st.n(liveRec.ID)-before)
	}
}

// TestOutside63ReplayedRotationDropsLiveKey: a rotation announces the old key's id; the old
// key lives on through the overlap. Someone who reads and publishes on Redis replays that
// genuine announcement: the gateway must not drop the (live) key from its cache.
func TestOutside63ReplayedRotationDropsLiveKey(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := o63Open(t, ctx, time.Hour)
	old, oldRec := e.key(t, ctx, "p")
	sealed := e.capture(t, ctx, func() {
		if _, _, err := e.a.RotateKey(ctx, oldRec.ID, time.Hour); err != nil {
			t.Fatal(err)
		}
	})
	if s := e.call(old); s != 200 { // the old key in its overlap, cached again
		t.Fatalf("the old key in its overlap: %d", s)
	}
	if s := e.call(old); s != 200 {
		t.Fatalf("the old key in its overlap: %d", s)
	}
	before := e.st.n(oldRec.ID)
	const replays = 20
	for range replays {
		if err := e.rdb.Publish(ctx, e.ch, sealed).Err(); err != nil {
			t.Fatal(err)
		}
		e.sentinel(t, ctx)
		if s := e.call(old); s != 200 {
			t.Fatalf("the old key in its overlap: %d", s)
		}
	}
	if n := e.st.n(oldRec.ID) - before; n > 0 {
		t.Errorf("replaying the genuine rotation announcement %d times (no audit key needed) dropped live key %s from the gateway's cache: %d store reads at its next uses (0 without the replays)",
			replays, oldRec.ID, n)
	}
}

// TestOutside63Confidentiality: what a Redis reader sees of a genuine announcement: no id
// (in any spelling), nothing that links two announcements of one id.
func TestOutside63Confidentiality(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := o63Open(t, ctx, time.Hour)
	_, r1 := e.key(t, ctx, "p1")
	_, r2 := e.key(t, ctx, "p2")
	m1 := e.capture(t, ctx, func() { e.a.announceRevocation(ctx, r1.ID) })
	m1b := e.capture(t, ctx, func() { e.a.announceRevocation(ctx, r1.ID) })
	m2 := e.capture(t, ctx, func() { e.a.announceRevocation(ctx, r2.ID) })
	raw, _ := hex.DecodeString(r1.ID)
	for _, needle := range [][]byte{[]byte(r1.ID), []byte(strings.ToUpper(r1.ID)), raw} {
		if bytes.Contains(m1, needle) {
			t.Errorf("the announcement holds %x", needle)
		}
	}
	if bytes.Equal(m1[9:], m1b[9:]) || bytes.Equal(m1[9:21], m1b[9:21]) {
		t.Error("two announcements of one id share nonce or ciphertext")
	}
	if len(m1) != len(m2) {
		t.Errorf("announcement lengths differ by id: %d, %d", len(m1), len(m2))
	}
	if bytes.Equal(m1[21:], m2[21:]) {
		t.Error("equal ciphertexts for two ids")
	}
}

// TestOutside63MalformedAnnouncements: announcements a publisher without the key can make
// from a genuine one (bit flips everywhere, truncations, extensions, another prefix's
// channel, another deployment's key, a reflowed header) or from nothing (empty, one byte,
// the id in the clear, 4 MiB - 1 KiB of junk): none drops the live key, each is counted,
// one ALERT, no goroutine left behind, memory back.
func TestOutside63MalformedAnnouncements(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := o63Open(t, ctx, time.Hour)
	live, liveRec := e.key(t, ctx, "p")
	genuine := sealRevocation(e.a.revocationAEAD(), e.ch, liveRec.ID, time.Now())
	var msgs [][]byte
	for i := range genuine {
		for bit := 0; bit < 8; bit += 3 {
			m := bytes.Clone(genuine)
			m[i] ^= 1 << bit
			msgs = append(msgs, m)
		}
	}
	for n := 0; n < len(genuine); n++ {
		msgs = append(msgs, genuine[:n])
	}
	msgs = append(msgs,
		append(bytes.Clone(genuine), 0),
		append(bytes.Clone(genuine), genuine...),
		sealRevocation(e.a.revocationAEAD(), "other-deployment:keys:revoked", liveRec.ID, time.Now()),
		sealRevocation(e.a.revocationAEAD(), strings.TrimSuffix(e.ch, ":keys:revoked")+"keys:revoked", liveRec.ID, time.Now()),
		sealRevocation((&App{revokeKey: bytes.Repeat([]byte{1}, 32)}).revocationAEAD(), e.ch, liveRec.ID, time.Now()),
		[]byte(liveRec.ID), []byte{}, []byte{1}, bytes.Repeat([]byte{1}, 4<<20-1024))
	// The header's time moved with the rest intact (the AAD covers it).
	moved := bytes.Clone(genuine)
	binary.BigEndian.PutUint64(moved[1:9], binary.BigEndian.Uint64(moved[1:9])+1)
	msgs = append(msgs, moved)

	goroutines := runtime.NumGoroutine()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap := ms.HeapAlloc
	before := e.st.n(liveRec.ID)
	rejected := testutil.ToFloat64(e.a.revocationsRejected)
	pipe := e.rdb.Pipeline()
	for _, m := range msgs {
		pipe.Publish(ctx, e.ch, m)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	e.sentinel(t, ctx)
	if got := testutil.ToFloat64(e.a.revocationsRejected) - rejected; got != float64(len(msgs)+1) {
		t.Errorf("%d malformed announcements and a sentinel: %v counted", len(msgs), got)
	}
	if s := e.call(live); s != 200 {
		t.Fatalf("the live key after malformed announcements: %d", s)
	}
	if n := e.st.n(liveRec.ID) - before; n != 0 {
		t.Errorf("malformed announcements dropped the live key's cache entry (%d store reads)", n)
	}
	if n := strings.Count(e.log.String(), "ALERT key revocations"); n != 1 {
		t.Errorf("%d ALERTs for the malformed announcements (want 1 a minute)", n)
	}
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc > heap+32<<20 {
		t.Errorf("heap grew from %d to %d bytes", heap, ms.HeapAlloc)
	}
	if g := runtime.NumGoroutine(); g > goroutines+5 {
		t.Errorf("goroutines: %d before, %d after", goroutines, g)
	}
	if strings.Contains(e.log.String(), "subscription failed") {
		t.Errorf("the subscription failed: %s", e.log.String())
	}
}

// TestOutside63OversizeAnnouncement: one message past the Redis client's 4 MiB bulk limit,
// published by someone without the audit key. It is an announcement dropped: it must be
// counted; and a real revocation announced right after must still take effect at once (the
// store poll is set to an hour here, so that what Redis carries is what is measured).
func TestOutside63OversizeAnnouncement(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := o63Open(t, ctx, time.Hour)
	tok, rec := e.key(t, ctx, "p")
	rejected := testutil.ToFloat64(e.a.revocationsRejected)
	if err := e.rdb.Publish(ctx, e.ch, bytes.Repeat([]byte{1}, 4<<20+1)).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // delivered
	// A real revocation from another replica: the store, then the announcement.
	if err := authn.NewKeys(e.a.Store, nil, time.Hour).Revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	e.a.announceRevocation(ctx, rec.ID)
	landed := time.Duration(-1)
	for time.Since(start) < 3*time.Second {
		if e.call(tok) == 401 {
			landed = time.Since(start)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	counted := testutil.ToFloat64(e.a.revocationsRejected) - rejected
	alerts := strings.Count(e.log.String(), "ALERT")
	t.Logf("oversize message: counted %v, ALERT lines %d; revocation landed after %v; log:\n%s", counted, alerts, landed, e.log.String())
	if counted < 1 {
		t.Errorf("the oversize announcement was dropped uncounted (strongroom_gateway_revocation_announcements_rejected_total +%v; ALERT lines: %d)", counted, alerts)
	}
	if landed < 0 || landed > 250*time.Millisecond {
		t.Errorf("a real revocation announced %v after one oversize message published on Redis took effect after %v (want at once)", 50*time.Millisecond, landed)
	}
}

// TestOutside63Flood: thousands of junk announcements a second for two seconds while real
// requests flow: every real request answers 200 promptly, a real revocation announced in
// the middle lands at once, every junk message is counted, one ALERT, and nothing is left
// spinning afterwards.
func TestOutside63Flood(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := o63Open(t, ctx, time.Hour)
	live, _ := e.key(t, ctx, "p")
	victim, victimRec := e.key(t, ctx, "q")
	goroutines := runtime.NumGoroutine()
	rejected := testutil.ToFloat64(e.a.revocationsRejected)

	var published atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // ~5,000 a second, 4 random forms
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			pipe := e.rdb.Pipeline()
			for i := range 100 {
				var junk []byte
				switch i % 4 {
				case 0: // a sealed announcement's shape, random
					junk = make([]byte, revocationHeader+16+16)
					rand.Read(junk)
					junk[0] = revocationVersion
				case 1: // and a fresh seal time
					junk = make([]byte, revocationHeader+16+16)
					rand.Read(junk)
					junk[0] = revocationVersion
					binary.BigEndian.PutUint64(junk[1:9], uint64(time.Now().UnixNano()))
				case 2: // the longest that is opened
					junk = make([]byte, revocationHeader+revocationMaxID+16)
					rand.Read(junk)
					junk[0] = revocationVersion
				case 3:
					junk = []byte{1, 2, 3}
				}
				pipe.Publish(ctx, e.ch, junk)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return
			}
			published.Add(100)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var worst time.Duration
	var bad []int
	deadline := time.Now().Add(2 * time.Second)
	revoked := false
	landed := time.Duration(-1)
	var start time.Time
	for time.Now().Before(deadline) {
		t0 := time.Now()
		if s := e.call(live); s != 200 {
			bad = append(bad, s)
		}
		worst = max(worst, time.Since(t0))
		if !revoked && time.Until(deadline) < time.Second {
			revoked = true
			if err := authn.NewKeys(e.a.Store, nil, time.Hour).Revoke(ctx, victimRec.ID); err != nil {
				t.Fatal(err)
			}
			start = time.Now()
			e.a.announceRevocation(ctx, victimRec.ID)
		}
		if revoked && landed < 0 && e.call(victim) == 401 {
			landed = time.Since(start)
		}
	}
	close(stop)
	wg.Wait()
	e.sentinel(t, ctx)
	counted := testutil.ToFloat64(e.a.revocationsRejected) - rejected
	t.Logf("published %d junk, counted %v (with the sentinel), worst request %v, revocation landed after %v",
		published.Load(), counted, worst, landed)
	if published.Load() < 2000 {
		t.Errorf("only %d junk messages published: the flood was too weak to prove anything", published.Load())
	}
	if len(bad) > 0 {
		t.Errorf("real requests during the flood answered %v", bad)
	}
	if worst > time.Second {
		t.Errorf("a real request took %v during the flood", worst)
	}
	if landed < 0 || landed > 250*time.Millisecond {
		t.Errorf("a real revocation during the flood took effect after %v (want at once)", landed)
	}
	if counted != float64(published.Load()+1) {
		t.Errorf("published %d junk and a sentinel, counted %v", published.Load(), counted)
	}
	if n := strings.Count(e.log.String(), "ALERT key revocations"); n != 1 {
		t.Errorf("%d ALERTs during the flood (want 1 a minute)", n)
	}
	time.Sleep(300 * time.Millisecond)
	if g := runtime.NumGoroutine(); g > goroutines+10 {
		t.Errorf("goroutines: %d before the flood, %d after", goroutines, g)
	}
	var ru0, ru1 [2]time.Duration
	ru0 = o63CPU(t)
	time.Sleep(time.Second)
	ru1 = o63CPU(t)
	if used := (ru1[0] - ru0[0]) + (ru1[1] - ru0[1]); used > 300*time.Millisecond {
		t.Errorf("the process used %v of CPU in the idle second after the flood", used)
	}
}

// TestOutside63SkewedRevoker: a replica whose clock is 3 minutes off revokes a key (its store
// write and its announcement carry its own clock). The claim: a real revocation takes effect
// at once on every replica — whatever Redis does, within the 250 ms store poll.
func TestOutside63SkewedRevoker(t *testing.T) {
	for _, skew := range []time.Duration{3 * time.Minute, -3 * time.Minute, 30 * time.Second, -90 * time.Second} {
		t.Run(fmt.Sprintf("skew=%v", skew), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			e := o63Open(t, ctx, 0) // the default poll: 250 ms
			tok, rec := e.key(t, ctx, "p")
			clock := func() time.Time { return time.Now().Add(skew) }
			if err := authn.NewKeys(e.a.Store, clock, 5*time.Second).Revoke(ctx, rec.ID); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			// Its announceRevocation, on its clock.
			if err := e.rdb.Publish(ctx, e.ch, sealRevocation(e.a.revocationAEAD(), e.ch, rec.ID, clock())).Err(); err != nil {
				t.Fatal(err)
			}
			landed := time.Duration(-1)
			wait := 1500 * time.Millisecond // ahead: the key works until this gateway's clock reaches the revoker's
			if skew < 0 {
				wait = 6 * time.Second // behind: measured up to the key cache's 5 s
			}
			for time.Since(start) < wait {
				if e.call(tok) == 401 {
					landed = time.Since(start)
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if landed < 0 || landed > 500*time.Millisecond {
				what := fmt.Sprintf("still works after %v", wait)
				if landed >= 0 {
					what = fmt.Sprintf("worked for %v", landed.Round(time.Millisecond))
				}
				t.Errorf("a key revoked by a replica whose clock is %v off %s on this gateway (store poll 250 ms, announcement %s)",
					skew, what, map[bool]string{true: "dropped as stale", false: "taken"}[strings.Contains(e.log.String(), "sealed too long ago")])
			}
		})
	}
}

// o63CPU is this process's user and system CPU time so far.
func o63CPU(t *testing.T) [2]time.Duration {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	const tick = 10 * time.Millisecond // USER_HZ 100
	return [2]time.Duration{time.Duration(u) * tick, time.Duration(s) * tick}
}

// TestOutside63OversizeRepeatedPollBound: someone who can publish sends a message past the
// client's bulk limit every 700 ms for 3 s. Whatever Redis does, a real revocation must take
// effect within the 250 ms store poll; the process must not pile up goroutines.
func TestOutside63OversizeRepeatedPollBound(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := o63Open(t, ctx, 0) // the default poll
	tok, rec := e.key(t, ctx, "p")
	live, _ := e.key(t, ctx, "q")
	goroutines := runtime.NumGoroutine()
	big := bytes.Repeat([]byte{1}, 4<<20+1)
	for i := range 4 {
		if err := e.rdb.Publish(ctx, e.ch, big).Err(); err != nil {
			t.Fatal(err)
		}
		if s := e.call(live); s != 200 {
			t.Fatalf("a live key while the subscription is cut: %d", s)
		}
		if i == 2 {
			time.Sleep(100 * time.Millisecond)
			if err := authn.NewKeys(e.a.Store, nil, time.Hour).Revoke(ctx, rec.ID); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			e.a.announceRevocation(ctx, rec.ID)
			for e.call(tok) != 401 {
				if time.Since(start) > 2*time.Second {
					t.Fatal("a revocation did not take effect within 2 s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if d := time.Since(start); d > 350*time.Millisecond {
				t.Errorf("a revocation took %v (the store poll is 250 ms)", d)
			} else {
				t.Logf("revocation landed after %v", d)
			}
		}
		time.Sleep(700 * time.Millisecond)
	}
	time.Sleep(1200 * time.Millisecond)
	if g := runtime.NumGoroutine(); g > goroutines+5 {
		t.Errorf("goroutines: %d before, %d after", goroutines, g)
	}
}

// TestOutside63StaleOrForeignSeal: a genuine announcement replayed past 2 minutes (either
// way), or opened on another deployment's channel or key, does not open; nor does one
// whose seal time is the far past or future.
func TestOutside63StaleOrForeignSeal(t *testing.T) {
	a := &App{revokeKey: bytes.Repeat([]byte{9}, 32)}
	g := a.revocationAEAD()
	now := time.Now()
	m := sealRevocation(g, "a:keys:revoked", "0123456789abcdef", now)
	for name, at := range map[string]time.Time{"+2m1s": now.Add(2*time.Minute + time.Second), "-2m1s": now.Add(-2*time.Minute - time.Second), "+1y": now.AddDate(1, 0, 0)} {
		if _, err := openRevocation(g, "a:keys:revoked", m, at); err == nil {
			t.Errorf("replayed at %s: opened", name)
		}
	}
	if _, err := openRevocation(g, "b:keys:revoked", m, now); err == nil {
		t.Error("opened on another prefix's channel")
	}
	for _, at := range []time.Time{time.Unix(0, 0), time.Unix(0, -1), time.Unix(0, 1<<63-1), {}} {
		if _, err := openRevocation(g, "a:keys:revoked", sealRevocation(g, "a:keys:revoked", "0123456789abcdef", at), now); err == nil {
			t.Errorf("sealed at %v: opened now", at)
		}
	}
}
