package detect

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/respguard"
	"github.com/strongroom/strongroom/internal/testenv"
)

var testBusKey = bytes.Repeat([]byte{7}, 32)

func newTestBus(t testing.TB, rdb redis.UniversalClient, prefix string, key []byte) *RedisBus {
	t.Helper()
	b, err := NewRedisBus(rdb, prefix, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testPrefix(t *testing.T) string {
	return "test:" + strings.ReplaceAll(t.Name(), "/", "_") + ":" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
}

// sealedBus is a bus on the test Redis under a prefix of the test's own, its stream removed
// at the end.
func sealedBus(t *testing.T) (*redis.Client, *RedisBus, string) {
	rdb := testenv.Redis(t)
	prefix := testPrefix(t)
	b := newTestBus(t, rdb, prefix, testBusKey)
	t.Cleanup(func() { rdb.Del(context.Background(), b.stream()) })
	return rdb, b, prefix
}

// wireOf is what a replica publishes for o.
func wireOf(t *testing.T, principal string, i int) []byte {
	t.Helper()
	o := sweep(i)
	o.Principal, o.Model = principal, principal+"Model"
	r := FromObservation(o)
	w := wireObs{Req: r, F: ExtractFeatures(&r)}
	w.Req.Prompt, w.Req.IP = "", ""
	b, err := json.Marshal(&w)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawEntries is what Redis holds of the stream: its entries' ids and values.
func rawEntries(t *testing.T, rdb *redis.Client, stream string) []redis.XMessage {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// TestBusHoldsNothingReadable: what Redis holds of a published observation and of a claim
// names neither the principal nor the model nor the request's parameters, and carries
// none of its features as published.
func TestBusHoldsNothingReadable(t *testing.T) {
	rdb, b, prefix := sealedBus(t)
	ctx := context.Background()
	rec := wireOf(t, "SealedPrincipal59", 0)
	if err := b.Publish(ctx, [][]byte{rec}); err != nil {
		t.Fatal(err)
	}
	key := "alert:logit_harvest:SealedPrincipal59"
	if won, err := b.Claim(ctx, key, time.Minute); !won || err != nil {
		t.Fatalf("claim: %v %v", won, err)
	}
	var held bytes.Buffer
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		held.WriteString(k + "\n")
		defer rdb.Del(ctx, k)
	}
	for _, m := range rawEntries(t, rdb, b.stream()) {
		for f, v := range m.Values {
			held.WriteString(f + "=" + v.(string) + "\n")
		}
	}
	var w wireObs
	json.Unmarshal(rec, &w)
	for _, s := range []string{"SealedPrincipal59", w.Req.Model, "logit_bias", `"f":`, strconv.FormatUint(w.F.Exact, 10), strconv.FormatUint(w.F.Sim, 10)} {
		if s != "" && bytes.Contains(held.Bytes(), []byte(s)) {
			t.Errorf("Redis holds %q in the clear", s)
		}
	}
	_, recs, err := b.Read(ctx, "")
	if err != nil || len(recs) != 1 || !bytes.Equal(recs[0], rec) {
		t.Fatalf("read back: %d records, %v", len(recs), err)
	}
}

// TestBusRefusesWhatNoReplicaSealed: someone with access to Redis appends a logit sweep
// for a victim — as a replica once wrote it (plain JSON), sealed under another key, a
// genuine record altered, repeated, cut, a record sealed minutes before — and none of it
// reaches the engine: the victim is not sanctioned, each is counted, and genuine sweeps
// afterwards are still caught, even once an entry far in the future moved the stream's
// clock.
func TestBusRefusesWhatNoReplicaSealed(t *testing.T) {
	rdb, b, prefix := sealedBus(t)
	ctx := context.Background()
	other := newTestBus(t, rdb, prefix, bytes.Repeat([]byte{8}, 32))
	xadd := func(id string, v []byte) {
		t.Helper()
		if id == "" {
			id = "*"
		}
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: b.stream(), ID: id, Values: []any{"o", v}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A genuine record of another principal, to repeat and to alter.
	if err := b.Publish(ctx, [][]byte{wireOf(t, "bystander", 0)}); err != nil {
		t.Fatal(err)
	}
	genuine := []byte(rawEntries(t, rdb, b.stream())[0].Values["o"].(string))
	var forged int
	for i := range 4 {
		xadd("", wireOf(t, "victim", i)) // plain
		other.Publish(ctx, [][]byte{wireOf(t, "victim", i)})
		forged += 2
	}
	flipped := bytes.Clone(genuine)
	flipped[len(flipped)/2] ^= 1
	xadd("", flipped)
	xadd("", genuine) // the same bytes again
	xadd("", genuine[:len(genuine)-1])
	xadd("", nil)
	forged += 4
	// A genuine sweep's record sealed two minutes ago, appended now: late by Redis's clock
	// and by the reader's.
	xadd("", b.seal.seal(wireOf(t, "victim", 0), time.Now().Add(-2*time.Minute)))
	forged++

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	aud := &seqAudit{}
	r := NewResponder(New(Config{HarvestTokens: 20}), ResponderConfig{Audit: aud, Duration: time.Hour, Bus: b})
	runResponder(t, runCtx, r)
	waitFor(t, "the bystander's record read", func() bool { return b.Rejected() == int64(forged) })
	// A genuine sweep by mallory after the forgeries: caught.
	for i := range 4 {
		r.Observe(sweep(i))
	}
	waitFor(t, "mallory's sweep to alert", func() bool { a, _ := r.Sanction("mallory"); return a == "strip_logprobs" })
	// Last, as it moves the stream's clock: an entry an hour ahead (a genuine record
	// repeated under it), after which Redis names every entry by that hour. Fresh records
	// still count (sealed within busMaxDelay of the reader's clock): trudy's sweep, each
	// entry "appended an hour after its seal", is caught; the repeat is not taken.
	future := time.Now().Add(time.Hour).UnixMilli()
	xadd(strconv.FormatInt(future, 10)+"-0", genuine)
	for i := range 4 {
		o := sweep(i)
		o.Principal = "trudy"
		r.Observe(o)
	}
	waitFor(t, "trudy's sweep to alert", func() bool { a, _ := r.Sanction("trudy"); return a == "strip_logprobs" })
	waitFor(t, "the repeat under the future id refused", func() bool { return b.Rejected() == int64(forged+1) })
	r.Wait()
	if a, _ := r.Sanction("victim"); a != "" {
		t.Fatalf("the forged sweep sanctioned its victim: %q", a)
	}
	if n := countKind(aud, "detect.alert"); n != 2 {
		t.Fatalf("%d alerts recorded, want 2 (mallory's, trudy's): %s", n, aud.kinds())
	}
	r.mu.Lock()
	seen := r.index
	r.mu.Unlock()
	if seen != 9 { // the bystander's, mallory's four and trudy's four
		t.Fatalf("the engine saw %d records, want 9", seen)
	}
}

// TestBusClaimsKeyed: a claim's name in Redis is keyed — one taken ahead of the replicas
// under the name a replica once used does not keep the alert from being recorded.
func TestBusClaimsKeyed(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	prefix := testPrefix(t)
	b := newTestBus(t, rdb, prefix, testBusKey)
	key := "alert:hydra:mallory"
	squat := prefix + "claim:" + key
	rdb.Set(ctx, squat, "attacker", time.Minute)
	defer rdb.Del(ctx, squat, prefix+"claim:"+b.seal.claimName(key))
	if won, err := b.Claim(ctx, key, time.Minute); !won || err != nil {
		t.Fatalf("a squatted claim name kept the replica from its claim: %v %v", won, err)
	}
	if other := newTestBus(t, rdb, prefix, bytes.Repeat([]byte{8}, 32)); other.seal.claimName(key) == b.seal.claimName(key) {
		t.Fatal("claim names do not depend on the key")
	}
}

// TestBusKeyRequired: no bus without a 32-byte key.
func TestBusKeyRequired(t *testing.T) {
	for _, k := range [][]byte{nil, make([]byte, 16), make([]byte, 33)} {
		if _, err := NewRedisBus(nil, "p:", k, nil); err == nil {
			t.Errorf("a %d-byte key accepted", len(k))
		}
	}
}

// FuzzOpenBusRecord: whatever Redis holds at whatever entry id, open refuses it or returns
// what a replica sealed.
func FuzzOpenBusRecord(f *testing.F) {
	s, err := newSealer(testBusKey, "fuzz:obs", nil)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	id := strconv.FormatInt(now.UnixMilli(), 10) + "-0"
	f.Add(s.seal([]byte(`{"r":{}}`), now), id)
	f.Add([]byte(`{"r":{"principal":"p"}}`), id)
	f.Add([]byte{sealVersion}, "0-0")
	f.Add(s.seal(nil, now), "-1-0")
	f.Fuzz(func(t *testing.T, rec []byte, id string) {
		plain, err := s.open(rec, id, time.Now())
		if err != nil {
			return
		}
		if string(plain) != `{"r":{}}` && len(plain) != 0 {
			t.Fatalf("opened what was never sealed: %q", plain)
		}
		if _, err := s.open(rec, id, time.Now()); err == nil {
			t.Fatal("the same record opened twice")
		}
	})
}

// TestBusSessions: a reader remembers only publishers whose records opened, forgets one a
// minute after its last record, and a forgotten one's old records stay refused.
func TestBusSessions(t *testing.T) {
	pub, _ := newSealer(testBusKey, "s:obs", nil)
	rd, _ := newSealer(testBusKey, "s:obs", nil)
	now := time.Now()
	id := func(at time.Time) string { return strconv.FormatInt(at.UnixMilli(), 10) + "-0" }
	for range 1000 { // forged sessions: fresh, well formed, never sealed under the key
		rec := pub.seal([]byte("x"), now)
		rand.Read(rec[9 : 9+sealSalt])
		if _, err := rd.open(rec, id(now), now); err == nil {
			t.Fatal("a record under a session nobody sealed opened")
		}
	}
	if n := len(rd.sessions); n != 0 {
		t.Fatalf("the reader holds %d sessions after forged records alone", n)
	}
	first := pub.seal([]byte("1"), now)
	if _, err := rd.open(first, id(now), now); err != nil {
		t.Fatal(err)
	}
	later := now.Add(3 * busMaxDelay)
	other, _ := newSealer(testBusKey, "s:obs", nil) // another publisher, a minute and a half on
	if _, err := rd.open(other.seal([]byte("2"), later), id(later), later); err != nil {
		t.Fatal(err)
	}
	if _, ok := rd.sessions[pub.salt]; ok || len(rd.sessions) != 1 {
		t.Fatalf("an idle publisher's session not forgotten: %d sessions", len(rd.sessions))
	}
	if _, err := rd.open(first, id(later), later); err == nil {
		t.Fatal("a forgotten session's old record opened again")
	}
	if _, err := rd.open(pub.seal([]byte("3"), later), id(later), later); err != nil {
		t.Fatalf("the idle publisher's next record: %v", err)
	}
}

// TestBusRecordLengthsPadded: what Redis holds of a record says nothing of a name's length
// within a 256-byte step — a principal named "a" and one with a 100-byte name, with a model
// named after each, seal to records of one length — and both still open and decode.
func TestBusRecordLengthsPadded(t *testing.T) {
	s, err := newSealer(testBusKey, "test:stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	short, long := wireOf(t, "a", 1), wireOf(t, strings.Repeat("p", 100), 1)
	if len(long)-len(short) < 150 || len(short)/sealPad != len(long)/sealPad {
		t.Fatalf("premise: plaintexts of %d and %d bytes, want both in one 256-byte step, 150+ apart", len(short), len(long))
	}
	now := time.Now()
	a, b := s.seal(short, now), s.seal(long, now)
	if len(a) != len(b) {
		t.Fatalf("sealed records of %d and %d bytes: the length tells the names apart", len(a), len(b))
	}
	if (len(a)-sealHeader-sealTag)%sealPad != 0 {
		t.Fatalf("sealed body of %d bytes is not padded to %d", len(a)-sealHeader-sealTag, sealPad)
	}
	id := strconv.FormatInt(now.UnixMilli(), 10) + "-0"
	for i, rec := range [][]byte{a, b} {
		plain, err := s.open(rec, id, now)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		w, err := decodeWire(plain)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if want := []string{"a", strings.Repeat("p", 100)}[i]; w.Req.Principal != want {
			t.Fatalf("record %d: principal %q, want %q", i, w.Req.Principal, want)
		}
	}
}

// TestBusStaleAndHistory: Redis names stream entries, so a record's entry time is Redis's
// word. A record sealed more than busMaxDelay before the reader reads it is taken only as
// history — sealed before the reader started, at most busHistoryAge before — never because
// its entry id says it is fresh.
func TestBusStaleAndHistory(t *testing.T) {
	pub, err := newSealer(testBusKey, "test:stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	idAt := func(at time.Time) string { return strconv.FormatInt(at.UnixMilli(), 10) + "-0" }
	for _, tc := range []struct {
		name    string
		started time.Time // the reader's
		sealed  time.Time
		taken   bool
	}{
		{"fresh", now.Add(-time.Hour), now.Add(-time.Second), true},
		{"sealed 10 min ago, after the reader started (a replay)", now.Add(-time.Hour), now.Add(-10 * time.Minute), false},
		{"sealed 10 min before the reader started (history)", now, now.Add(-10 * time.Minute), true},
		{"sealed an hour before the reader started", now, now.Add(-time.Hour), false},
	} {
		rd, err := newSealer(testBusKey, "test:stream", nil)
		if err != nil {
			t.Fatal(err)
		}
		rd.started = tc.started
		// The entry id Redis gives is the record's seal time: the entry says "fresh".
		_, err = rd.open(pub.seal([]byte(`{"x":1}`), tc.sealed), idAt(tc.sealed), now)
		if (err == nil) != tc.taken {
			t.Errorf("%s: %v, want taken %v", tc.name, err, tc.taken)
		}
	}
}

// TestBusReadWithinGuard: someone with write access to Redis fills the stream with entries of
// the largest record a read takes (256 KiB each, 256 of them: 64 MiB). A reader whose client
// reads through respguard (as serve's does: 16 MiB a reply) must refuse them as unsealed and
// move past them, not fail every read at the same cursor (the stream then stalled for it).
func TestBusReadWithinGuard(t *testing.T) {
	opt, err := redis.ParseURL(testenv.Get(t, "STRONGROOM_TEST_REDIS"))
	if err != nil {
		t.Fatal(err)
	}
	opt.ContextTimeoutEnabled = true
	opt.Dialer = respguard.Dialer(redis.NewDialer(opt), respguard.Default)
	guarded := redis.NewClient(opt)
	defer guarded.Close()
	rdb := testenv.Redis(t)
	prefix := testPrefix(t)
	b := newTestBus(t, guarded, prefix, testBusKey)
	ctx := context.Background()
	defer rdb.Del(ctx, b.stream())
	big := strings.Repeat("x", busRecordMax)
	for range busReadCount {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: b.stream(), Values: []any{"o", big}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publish(ctx, [][]byte{wireOf(t, "after-the-flood", 0)}); err != nil {
		t.Fatal(err)
	}
	cursor, reads := "", 0
	for ; reads < 2*busReadCount; reads++ {
		next, recs, err := b.Read(ctx, cursor)
		if err != nil {
			t.Fatalf("read %d at cursor %q: %v", reads, cursor, err)
		}
		cursor = next
		if len(recs) == 1 {
			if w, err := decodeWire(recs[0]); err != nil || w.Req.Principal != "after-the-flood" {
				t.Fatalf("record after the flood: %v %v", w.Req.Principal, err)
			}
			break
		}
	}
	if reads == 2*busReadCount {
		t.Fatalf("the record after %d crafted entries not read in %d reads", busReadCount, reads)
	}
	if b.Rejected() != busReadCount {
		t.Errorf("%d entries refused, want %d", b.Rejected(), busReadCount)
	}
	t.Logf("%d reads to pass %d entries of %d KiB", reads+1, busReadCount, busRecordMax>>10)
}
