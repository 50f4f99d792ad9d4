package limits

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/respguard"
	"github.com/strongroom/strongroom/internal/testenv"
	"github.com/strongroom/strongroom/internal/tlsclient"
)

// TestRedisHiddenNames: with HideNames, Redis's keys name no scope (an API key id, a
// tenant, a model, a principal) — only keyed digests — and replicas with the same key
// still share one limit, while a replica under another key counts apart.
func TestRedisHiddenNames(t *testing.T) {
	ctx := context.Background()
	c := redisClient(t)
	prefix := uniquePrefix()
	key := []byte("0123456789abcdef0123456789abcdef")
	mk := func(k []byte) *Redis {
		r := NewRedis(redisClient(t), prefix, nil)
		r.HideNames(k)
		return r
	}
	a, b := mk(key), mk(key)
	secret := []string{"key:K7Q2ZX9", "tenant:acme-secret", "model:frontier-x", "sanction:jwt:alice@example.com"}
	scopes := []Scope{{Name: secret[0], Limits: Limits{RPM: 4, Concurrent: 3, DailyTokens: 1000}}, {Name: secret[1], Limits: Limits{RPM: 100}},
		{Name: secret[2], Limits: Limits{TPM: 10000}}, {Name: secret[3], Limits: Limits{RPM: 50}}}
	admitted := 0
	for i := range 10 {
		r := a
		if i%2 == 1 {
			r = b
		}
		done, d, err := r.Admit(ctx, scopes, 7)
		if err != nil {
			t.Fatal(err)
		}
		if d == nil {
			admitted++
			done(7)
		} else if d.Scope != secret[0] {
			t.Fatalf("denied on %q, want the key's scope named in the process", d.Scope)
		}
	}
	if admitted < 4 || admitted > 5 {
		t.Fatalf("two replicas under one key admitted %d of 10 against rpm 4 (shared: 4, or 5 with a refill)", admitted)
	}
	keys, err := c.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(scopes) {
		t.Fatalf("Redis holds %d keys under the prefix, want %d: %q", len(keys), len(scopes), keys)
	}
	want := map[string]bool{}
	for _, s := range secret {
		want[a.ScopeKey(s)] = true
		if a.ScopeKey(s) != b.ScopeKey(s) {
			t.Fatalf("one key, two names for %q", s)
		}
	}
	for _, k := range keys {
		if !want[k] {
			t.Errorf("key %q is no scope's digest", k)
		}
		rest := strings.TrimPrefix(k, prefix)
		if !strings.HasPrefix(rest, "s:") || len(rest) != 2+32 {
			t.Errorf("key %q: want PREFIX s:<32 hex>", k)
		}
		vals, err := c.HGetAll(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secret {
			_, name, _ := strings.Cut(s, ":")
			for f, v := range vals {
				if strings.Contains(k, name) || strings.Contains(f, name) || strings.Contains(v, name) {
					t.Errorf("Redis key %q (field %q) holds %q", k, f, name)
				}
			}
		}
	}
	// Another fleet's key (or a replica configured with another audit key) counts apart.
	other := mk([]byte("another key, another fleet......"))
	if other.ScopeKey(secret[0]) == a.ScopeKey(secret[0]) {
		t.Fatal("two keys name a scope alike")
	}
	if _, d, err := other.Admit(ctx, scopes, 7); err != nil || d != nil {
		t.Fatalf("a limiter under another key shares the first's counts: %v %v", d, err)
	}
	// Without a key the names are Redis's as before (tests and single-host use).
	if k := NewRedis(c, prefix, nil).ScopeKey(secret[1]); k != prefix+secret[1] {
		t.Fatalf("unkeyed name %q", k)
	}
}

// BenchmarkRedisAdmit: an admission and its release on the real Redis, three scopes (one
// with a concurrency limit), one goroutine: "plain" names scopes in the clear through a
// client as tests make them; "served" is serve's — keyed names (HideNames), the replies
// read through respguard, the context's deadline on the socket; "served-tls" the same over
// Redis's TLS port with the fleet CA and a client certificate. CPU a request (this
// process's; Redis's own is not counted) is reported beside the wall time.
func BenchmarkRedisAdmit(b *testing.B) {
	for _, name := range []string{"plain", "served", "served-tls"} {
		served := name != "plain"
		b.Run(name, func(b *testing.B) {
			url := "STRONGROOM_TEST_REDIS"
			if name == "served-tls" {
				url = "STRONGROOM_TEST_REDIS_TLS" // the fleet CA and a client certificate, as app.Redis with gateway.redis_tls
			}
			opt, err := redis.ParseURL(testenv.Get(b, url))
			if err != nil {
				b.Fatal(err)
			}
			if name == "served-tls" {
				dir := testenv.Get(b, "STRONGROOM_TEST_TLS_DIR")
				tc, err := tlsclient.Config(tlsclient.Files{CA: filepath.Join(dir, "ca.pem"),
					Cert: filepath.Join(dir, "client.pem"), Key: filepath.Join(dir, "client.key")})
				if err != nil {
					b.Fatal(err)
				}
				tc.ServerName = opt.TLSConfig.ServerName
				opt.TLSConfig = tc
			}
			if served {
				opt.ContextTimeoutEnabled = true
				opt.Dialer = respguard.Dialer(redis.NewDialer(opt), respguard.Default)
			}
			c := redis.NewClient(opt)
			defer c.Close()
			r := NewRedis(c, uniquePrefix(), nil)
			if served {
				r.HideNames([]byte("0123456789abcdef0123456789abcdef"))
			}
			sc := []Scope{{Name: "key:0123456789abcdef", Limits: Limits{RPM: 1 << 30, Concurrent: 1 << 20, DailyTokens: 1 << 40}},
				{Name: "tenant:acme", Limits: Limits{TPM: 1 << 40}}, {Name: "model:frontier-1", Limits: Limits{Concurrent: 1 << 20}}}
			ctx := context.Background()
			cpu0 := testenv.CPUTime()
			b.ResetTimer()
			for b.Loop() {
				done, d, err := r.Admit(ctx, sc, 10)
				if err != nil || d != nil {
					b.Fatal(d, err)
				}
				done(10)
			}
			b.ReportMetric(float64((testenv.CPUTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
