package main

// Outside round 59: an attacker who can read and write the Redis a fleet shares
// (gateway.redis_url: a stolen Redis password, a neighbour on a shared instance, a malicious
// Redis operator) and holds none of Strongroom's keys or files. The whole assembly:
// `strongroom serve` (its own process, outside57's helpers) with gateway.redis_url on the
// Redis of scripts/test under a prefix of the test's own, routes to an engine in this test
// process, API keys of three principals in two tenants, a non-public ("restricted") model
// with a daily token budget per key and a public one open to logit_bias, every detector
// enforced (`detect promote all`, logit harvest at 20 biased ids). The attacker is this test
// with a Redis client of its own, nothing else.
//
// Found (each fails while it lasts):
//   - "what Redis holds in the clear": the limiter's keys named API key ids, tenants, models
//     and a throttled principal (limits:sanction:NAME); their values are each one's tokens
//     today and request buckets; revoked key ids go out on PREFIXkeys:revoked. Since the
//     forty-fifth session the names are keyed digests (limits.HideNames) and the values are
//     logged as residuals; since the forty-sixth the announcements are sealed
//     (app/revocation.go).
//   - "restricted budget after one write": one HSET of a key's scope (day 9999-12-31, dt
//     −10^12) and the restricted model is served to that key past its daily_tokens, with no
//     end: the forged day is kept ("a scope's day never goes back").
//   - "stream rewind": XSETID of the detection stream a day ahead, one request, DEL, and the
//     replica no longer detects anything, its own traffic included, while /metrics and its
//     log show nothing.
//
// Held: "forged revocation" (an announced revocation only empties a cache), "scope of the
// wrong type" (the restricted model 503; the public one per local_fallback_public).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/detect"
	"github.com/strongroom/strongroom/internal/limits"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// o59Dump is everything Redis holds under prefix, as the attacker reads it: each key's
// name, type and values.
func o59Dump(t *testing.T, rdb *redis.Client, prefix string) string {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		typ, _ := rdb.Type(ctx, k).Result()
		fmt.Fprintf(&b, "%s (%s)", k, typ)
		switch typ {
		case "hash":
			h, _ := rdb.HGetAll(ctx, k).Result()
			fs := make([]string, 0, len(h))
			for f, v := range h {
				fs = append(fs, f+"="+v)
			}
			sort.Strings(fs)
			fmt.Fprintf(&b, " %s", strings.Join(fs, " "))
		case "string":
			v, _ := rdb.Get(ctx, k).Result()
			fmt.Fprintf(&b, " %q", v)
		case "stream":
			n, _ := rdb.XLen(ctx, k).Result()
			fmt.Fprintf(&b, " %d entries", n)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// o59FleetConfig writes dir's config for a fleet on redisURL under prefix: routes for
// TAG-restricted and TAG-public to engineURL, every key concurrent 4 and dailyTokens a day,
// local_fallback_public, logit harvest at 20 ids; it returns the config written.
func o59FleetConfig(t *testing.T, dir, redisURL, prefix, tag, engineURL string, dailyTokens int64) config.Config {
	t.Helper()
	cfgPath := filepath.Join(dir, config.FileName)
	c, err := config.ReadRaw(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	c.Gateway.RedisURL = redisURL
	c.Gateway.RedisPrefix = prefix
	c.Gateway.Routes = []config.Route{{Model: tag + "-restricted", Upstreams: []string{engineURL + "/v1"}}, {Model: tag + "-public", Upstreams: []string{engineURL + "/v1"}}}
	c.Gateway.KeyLimits = config.Limits{Concurrent: 4, DailyTokens: dailyTokens}
	c.Gateway.LocalFallbackPublic = true
	dc, err := detect.ParseConfig(c.Detect)
	if err != nil {
		t.Fatal(err)
	}
	dc.HarvestTokens = 20
	c.Detect = dc.JSON()
	if err := config.Write(cfgPath, c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestOutside59SharedRedisFleet(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	prefix := fmt.Sprintf("test:o59:%x:", time.Now().UnixNano())
	t.Cleanup(func() {
		if keys, _ := rdb.Keys(context.Background(), prefix+"*").Result(); len(keys) > 0 {
			rdb.Del(context.Background(), keys...)
		}
	})
	// The engine: 400 tokens an answer of the restricted model, 5 of the public one.
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		tok := 5
		if bytes.Contains(b, []byte("o59-restricted")) {
			tok = 400
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":%d,"total_tokens":%d}}`, tok, tok+1)
	}))
	defer engine.Close()

	dir := t.TempDir()
	o57In(t, dir, "init", "--internal-country", "US")
	o57In(t, dir, "detect", "promote", "all")
	o57In(t, dir, "model", "register", "o59-restricted:1", "--classification", "restricted", "--owner", "o59")
	o57In(t, dir, "model", "register", "o59-public:1", "--classification", "public", "--owner", "o59")
	o57In(t, dir, "model", "set", "o59-public:1", "--logit-bias", "allow", "--max-top-logprobs", "5")
	keys := map[string]string{}
	for _, p := range []string{"alice-o59", "bob-o59", "mallory-o59", "control-o59"} {
		tenant := "acme-o59"
		if p == "mallory-o59" || p == "control-o59" {
			tenant = "globex-o59"
		}
		o57In(t, dir, "principal", "add", p, "--tenant", tenant, "--roles", "researcher", "--country", "US")
		keys[p] = strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", p))
	}
	spare := strings.TrimSpace(o57In(t, dir, "key", "create", "--principal", "bob-o59"))
	c := o59FleetConfig(t, dir, testenv.Get(t, "STRONGROOM_TEST_REDIS"), prefix, "o59", engine.URL, 1000)
	// The limiter's key name of a scope, as every replica derives it (limits.HideNames).
	hkPath := c.Audit.HMACKey
	if !filepath.IsAbs(hkPath) {
		hkPath = filepath.Join(dir, hkPath)
	}
	hk, err := os.ReadFile(hkPath)
	if err != nil {
		t.Fatal(err)
	}
	namer := limits.NewRedis(nil, prefix+"limits:", nil)
	namer.HideNames(audit.DeriveKey(hk, limits.NamesLabel))
	keyScope := func(key string) string { return namer.ScopeKey("key:" + authn.KeyID(key)) }
	env := []string{"STRONGROOM_DATA=" + dir}
	s := o57Serve(t, env, "-v")
	defer s.stop(t)

	post := func(key, body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.gw+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	restricted := `{"model":"o59-restricted","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}`
	sweepReq := func(i int) string {
		bias := map[string]int{}
		for k := range 5 {
			bias[strconv.Itoa(i*5+k)] = 100
		}
		b, _ := json.Marshal(map[string]any{"model": "o59-public", "max_tokens": 1, "logprobs": true, "top_logprobs": 5, "logit_bias": bias,
			"messages": []any{map[string]string{"role": "user", "content": "the same prompt"}}})
		return string(b)
	}
	// sweep sends n requests of a logit sweep and returns how many were answered 200.
	sweep := func(key string, n int) int {
		ok := 0
		for i := range n {
			if post(key, sweepReq(i)) == 200 {
				ok++
			}
		}
		return ok
	}
	metric := func(name string) string {
		m := o57Do(t, "GET", s.admin+"/metrics", "", "")
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, name+" ") {
				return strings.TrimPrefix(l, name+" ")
			}
		}
		return "absent"
	}

	t.Run("what Redis holds in the clear", func(t *testing.T) {
		// The attacker listens for key revocations.
		sub := rdb.Subscribe(ctx, prefix+"keys:revoked")
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		if st := post(keys["alice-o59"], restricted); st != 200 {
			t.Fatalf("premise: alice's request: %d", st)
		}
		if st := post(keys["bob-o59"], `{"model":"o59-public","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`); st != 200 {
			t.Fatalf("premise: bob's request: %d", st)
		}
		// A detector's throttle on bob, as the store holds it (every gateway reloads it
		// within 2 s); bob's next request is charged to the throttle's scope too.
		st, err := store.Open(ctx, filepath.Join(dir, c.Store))
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		if err := st.PutSanction(ctx, store.Sanction{Principal: "bob-o59", Action: "throttle", Detector: "probing", Since: now, Until: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		st.Close()
		var dump string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			post(keys["bob-o59"], `{"model":"o59-public","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)
			dump = o59Dump(t, rdb, prefix)
			if strings.Contains(dump, namer.ScopeKey("sanction:bob-o59")) || time.Now().After(deadline) {
				break
			}
		}
		if !strings.Contains(dump, namer.ScopeKey("sanction:bob-o59")) {
			t.Errorf("premise: bob's throttle scope %q is not in Redis after 10 s", namer.ScopeKey("sanction:bob-o59"))
		}
		o57In(t, dir, "key", "revoke", authn.KeyID(spare))
		var revoked string
		select {
		case m := <-sub.Channel():
			revoked = m.Payload
		case <-time.After(5 * time.Second):
		}
		t.Logf("Redis under %s:\n%s", prefix, dump)
		// Detection's keys (the sealed stream, the keyed claims) must hold none of it; the
		// limiter's key names are keyed digests, and its hashes hold each scope's usage.
		var detection, limiter strings.Builder
		for _, l := range strings.Split(dump, "\n") {
			if strings.HasPrefix(l, prefix+"detect:") {
				detection.WriteString(l + "\n")
			} else {
				limiter.WriteString(l + "\n")
			}
		}
		entries, err := rdb.XRange(ctx, prefix+"detect:obs", "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			for f, v := range e.Values {
				fmt.Fprintf(&detection, "%s %s=%v\n", e.ID, f, v)
			}
		}
		if len(entries) == 0 {
			t.Fatal("premise: the detection stream holds nothing")
		}
		var clear, named, residual []string
		for what, s := range map[string]string{
			"a principal's name (bob-o59's throttle)": "bob-o59",
			"a tenant's name":                         "acme-o59",
			"a model's name":                          "o59-restricted",
			"alice's API key id":                      authn.KeyID(keys["alice-o59"]),
			"bob's API key id":                        authn.KeyID(keys["bob-o59"]),
			"a day's usage (alice's tokens today)":    "dt=401",
		} {
			if strings.Contains(detection.String(), s) {
				clear = append(clear, fmt.Sprintf("%s (%q)", what, s))
			}
			switch {
			case !strings.Contains(limiter.String(), s):
			case s == "dt=401": // a scope's usage, under a name that says whose it is not
				residual = append(residual, fmt.Sprintf("%s (%q)", what, s))
			default:
				named = append(named, fmt.Sprintf("%s (%q)", what, s))
			}
		}
		switch {
		case revoked == "":
			t.Errorf("premise: no announcement on %skeys:revoked within 5 s of a revocation", prefix)
		case strings.Contains(revoked, authn.KeyID(spare)):
			// Sealed since the forty-sixth session (app/revocation.go).
			t.Errorf("a revoked key's id goes out in the clear on %skeys:revoked (%q)", prefix, revoked)
		}
		sort.Strings(clear)
		sort.Strings(named)
		sort.Strings(residual)
		if len(clear) > 0 {
			t.Errorf("detection's keys in Redis hold in the clear (DESIGN, \"Replicas\": \"Redis holds no principal, model, parameter or feature in the clear\"):\n  %s", strings.Join(clear, "\n  "))
		}
		if len(named) > 0 {
			t.Errorf("the limiter's keys in Redis name (DESIGN, \"Shared limits\": its key names are keyed digests of the scopes' names):\n  %s", strings.Join(named, "\n  "))
		}
		if !strings.Contains(dump, namer.ScopeKey("key:"+authn.KeyID(keys["alice-o59"]))) {
			t.Errorf("premise: alice's key scope %q is not in Redis", namer.ScopeKey("key:"+authn.KeyID(keys["alice-o59"])))
		}
		t.Logf("residual (DESIGN, shared limits): what Redis holds in the clear:\n  %s", strings.Join(residual, "\n  "))
	})

	t.Run("restricted budget after one write", func(t *testing.T) {
		key := keys["alice-o59"]
		served := 1 // the request above: 401 tokens
		for range 5 {
			if post(key, restricted) != 200 {
				break
			}
			served++
		}
		if served != 3 {
			t.Fatalf("premise: daily_tokens 1000 at ~401 tokens a request served %d requests, want 3", served)
		}
		// The attacker's one write.
		if err := rdb.HSet(ctx, keyScope(key), "day", "9999-12-31", "dt", "-1000000000000").Err(); err != nil {
			t.Fatal(err)
		}
		more := 0
		for range 20 {
			if post(key, restricted) == 200 {
				more++
			}
		}
		if more > 3 {
			day, _ := rdb.HGet(ctx, keyScope(key), "day").Result()
			t.Errorf("after one HSET of the key's scope the restricted model served %d more requests (~%d tokens) on daily_tokens 1000 (at most 3 more: one reset); the scope still names day %q, so no later day resets it",
				more, more*401, day)
		}
	})

	// A revocation announced by the attacker for an innocent's key (PUBLISH on
	// PREFIXkeys:revoked). Held unless it fails: an announcement only drops the key from the
	// gateways' caches, and one that is not sealed under the revocation key not even that;
	// the store decides (app/revocation.go).
	t.Run("forged revocation", func(t *testing.T) {
		key := keys["control-o59"]
		for range 3 {
			if err := rdb.Publish(ctx, prefix+"keys:revoked", authn.KeyID(key)).Err(); err != nil {
				t.Fatal(err)
			}
			if st := post(key, `{"model":"o59-public","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`); st != 200 {
				t.Errorf("a key whose revocation only the attacker announced was answered %d", st)
			}
		}
	})

	// A key's scope turned into a string: Redis answers WRONGTYPE for that key alone.
	// DESIGN ("Gateway"): "Redis down: local fallback for public models only, 503 for the
	// rest". Held unless it fails: the restricted model is refused; the public one follows
	// the documented fallback (in-process limits, an ALERT line).
	t.Run("scope of the wrong type", func(t *testing.T) {
		key := keys["control-o59"]
		if st := post(key, restricted); st != 200 {
			t.Fatalf("premise: %d", st)
		}
		if err := rdb.Set(ctx, keyScope(key), "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
		defer rdb.Del(ctx, keyScope(key))
		if st := post(key, restricted); st != 503 {
			t.Errorf("the restricted model answered %d with the key's scope unusable in Redis, want 503", st)
		}
		st := post(key, `{"model":"o59-public","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)
		t.Logf("the public model: %d (documented: local fallback)", st)
	})

	t.Run("stream rewind", func(t *testing.T) {
		stream := prefix + "detect:obs"
		// 1. The stream's clock a day ahead (XSETID; the stream exists: every request above
		// is on it). The control sweep that follows is published there, read, and caught:
		// every reader's cursor is now a day ahead.
		tomorrow := time.Now().Add(24 * time.Hour).UnixMilli()
		if err := rdb.Do(ctx, "XSETID", stream, strconv.FormatInt(tomorrow, 10)+"-0").Err(); err != nil {
			t.Fatalf("XSETID: %v", err)
		}
		if ok := sweep(keys["control-o59"], 12); ok > 8 {
			t.Fatalf("premise: a logit sweep (threshold 20 ids, 5 a request) was answered %d times of 12", ok)
		}
		logged := len(s.errb.String())
		// 2. The stream deleted: the next entries are named by Redis's clock, today.
		if err := rdb.Del(ctx, stream).Err(); err != nil {
			t.Fatal(err)
		}
		ok := sweep(keys["mallory-o59"], 12)
		// Give a late alert its time: mallory's sanction would refuse the sweep's requests.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && ok == 12; time.Sleep(200 * time.Millisecond) {
			if post(keys["mallory-o59"], sweepReq(12)) != 200 {
				ok = -1
			}
		}
		var lines []string
		for _, l := range strings.Split(s.errb.String()[logged:], "\n") {
			if strings.Contains(l, "ALERT") || strings.Contains(l, "detect") {
				lines = append(lines, l)
			}
		}
		n, _ := rdb.XLen(ctx, stream).Result()
		if ok == 12 {
			t.Errorf("after XSETID %d-0 and DEL of %s, a 12-request logit sweep (60 biased ids, threshold 20) through this replica was answered in full, and 5 s later still; "+
				"/metrics: strongroom_detect_bus_degraded %s, strongroom_detect_bus_rejected_total %s; serve's log since: %q; the stream holds %d records no reader reads",
				tomorrow, stream, metric("strongroom_detect_bus_degraded"), metric("strongroom_detect_bus_rejected_total"), lines, n)
		}
	})
}
