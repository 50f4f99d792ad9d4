package app

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/refmodel"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
)

// initApp initialises a data directory, lets edit change its config (nil: defaults), and
// opens it; the App is closed when the test ends.
func initApp(t *testing.T, ctx context.Context, edit func(*config.Config)) (*App, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := Init(ctx, dir, InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		cfgPath := filepath.Join(dir, config.FileName)
		c, err := config.ReadRaw(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		edit(&c)
		if err := config.Write(cfgPath, c); err != nil {
			t.Fatal(err)
		}
	}
	a, err := Open(ctx, dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, dir
}

// importModel synthesizes a small model and imports it as name:version.
func importModel(t *testing.T, ctx context.Context, a *App, name, version, classification string) {
	t.Helper()
	src := filepath.Join(t.TempDir(), "model")
	if err := refmodel.Synthesize(src, refmodel.SynthOptions{Layers: 1, Hidden: 8, Vocab: 16}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Inventory.Import(ctx, src, inventory.Meta{Name: name, Version: version, Classification: classification}); err != nil {
		t.Fatal(err)
	}
}

// alice registers principal alice (tenant t, US) and returns a new API key of hers.
func alice(t *testing.T, ctx context.Context, a *App) string {
	t.Helper()
	if err := a.AddPrincipal(ctx, store.Principal{ID: "alice", Tenant: "t", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	key, _, err := a.APIKeys().Create(ctx, "alice", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// serveGateway opens a's gateway with one public model "m" on a fixed-answer engine and
// returns a function that sends a chat request with a bearer token and gives its status.
func serveGateway(t *testing.T, ctx context.Context, a *App) func(bearer string) int {
	t.Helper()
	importModel(t, ctx, a, "m", "1", "public")
	engine := httptest.NewServer(&refmodel.Server{Name: "m", Fixed: "ok", APIKey: []byte("engine-secret")})
	t.Cleanup(engine.Close)
	gw, err := a.OpenGateway(ctx, GatewayOptions{Routes: []gateway.Route{{Model: "m", Upstreams: []string{engine.URL + "/v1"}, UpstreamKey: "engine-secret"}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return func(bearer string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
}

// TestGatewayAcceptsConfiguredOIDC: with gateway.oidc configured, the gateway OpenGateway
// builds accepts the provider's JWTs besides API keys (it was once handed API keys only),
// and a key revoked through the app stops working at once.
func TestGatewayAcceptsConfiguredOIDC(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &priv.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	}))
	defer jwks.Close()
	a, _ := initApp(t, ctx, func(c *config.Config) {
		c.Gateway.OIDC = &config.OIDC{Issuer: "https://idp.test", Audience: "strongroom", JWKSURL: jwks.URL}
	})
	if err := a.AddPrincipal(ctx, store.Principal{ID: "fed-user", Tenant: "acme", Country: "US"}); err != nil {
		t.Fatal(err)
	}
	call := serveGateway(t, ctx, a)
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: priv}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: "https://idp.test", Audience: jwt.Audience{"strongroom"}, Subject: "fed-user",
		IssuedAt: jwt.NewNumericDate(time.Now()), Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	if s := call(tok); s != 200 {
		t.Fatalf("OIDC token: %d", s)
	}
	// The control API's watermark detection authenticates with the same chain: the OIDC
	// token gets past authentication (403: fed-user has no security role), a bad one not.
	wm := func(bearer string) int {
		req := httptest.NewRequest(http.MethodPost, "/v1/watermark/detect", strings.NewReader(`{"text":"x","all_tenants":true}`))
		req.Header.Set("Authorization", "Bearer "+bearer)
		rw := httptest.NewRecorder()
		a.WatermarkHandler().ServeHTTP(rw, req)
		return rw.Code
	}
	if s := wm(tok); s != http.StatusForbidden {
		t.Fatalf("watermark detection with the OIDC token: %d, want 403 (authenticated, not permitted)", s)
	}
	if s := wm(tok + "x"); s != http.StatusUnauthorized {
		t.Fatalf("watermark detection with a forged token: %d", s)
	}
	key, rec, err := a.CreateKey(ctx, "fed-user", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := call(key); s != 200 {
		t.Fatalf("API key: %d", s)
	}
	if err := a.RevokeKey(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if s := call(key); s != 401 {
		t.Fatalf("revoked key through the same app: %d", s)
	}
}

// TestDetectorModesReachRunningGateway: a new deployment starts every detector in shadow
// mode; `detect promote` (SetDetectorMode) reaches the running responder without a restart.
func TestDetectorModesReachRunningGateway(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, _ := initApp(t, ctx, nil)
	r, err := a.Responder(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := r.Mode("probing"); m != "shadow" {
		t.Fatalf("new deployment: probing %s, want shadow", m)
	}
	if err := a.SetDetectorMode(ctx, "probing", "enforce"); err != nil {
		t.Fatal(err)
	}
	for r.Mode("probing") != "enforce" { // the watcher polls every 2 s
		time.Sleep(20 * time.Millisecond)
	}
	if m := r.Mode("distillation"); m != "shadow" {
		t.Fatalf("promoting probing changed distillation to %s", m)
	}
	if err := a.SetDetectorMode(ctx, "nope", "enforce"); err == nil {
		t.Fatal("unknown detector accepted")
	}
}

// TestRevocationAnnouncedThroughRedis: with gateway.redis_url, a key revoked by another
// process stops working at a running gateway at once — its store poll is an hour here, so
// only the announcement can do it (issue 12, finding 12).
func TestRevocationAnnouncedThroughRedis(t *testing.T) {
	redisURL := testenv.Get(t, "STRONGROOM_TEST_REDIS")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, _ := initApp(t, ctx, func(c *config.Config) {
		c.Gateway.RedisURL, c.Gateway.RedisPrefix = redisURL, fmt.Sprintf("test-revoke-%d:", time.Now().UnixNano())
	})
	a.KeyWatchInterval = time.Hour
	a.AddPrincipal(ctx, store.Principal{ID: "p", Tenant: "t", Country: "US"})
	tok, rec, err := a.CreateKey(ctx, "p", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve := serveGateway(t, ctx, a)
	call := func() int { return serve(tok) }
	if s := call(); s != 200 {
		t.Fatalf("before revocation: %d", s)
	}
	rdb, _ := a.Redis()
	for { // the gateway's subscription is up
		n, err := rdb.PubSubNumSub(ctx, a.revocationChannel()).Result()
		if err == nil && n[a.revocationChannel()] > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Another process revokes: the store changes behind this gateway's cache, and the
	// revoking process announces it.
	if err := authn.NewKeys(a.Store, nil, time.Hour).Revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if s := call(); s != 200 {
		t.Fatalf("cache dropped without the announcement (%d): the test would prove nothing", s)
	}
	// Announcements that do not open under the revocation key — the id in the clear (a
	// forger, or a replica of an older version), one sealed under another key, one sealed
	// 10 minutes ago — are dropped and counted; the cache keeps the key.
	other := &App{revokeKey: make([]byte, 32)}
	ch := a.revocationChannel()
	for _, m := range [][]byte{[]byte(rec.ID), sealRevocation(other.revocationAEAD(), ch, rec.ID, time.Now()),
		sealRevocation(a.revocationAEAD(), ch, rec.ID, time.Now().Add(-10*time.Minute))} {
		if err := rdb.Publish(ctx, ch, m).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for testutil.ToFloat64(a.revocationsRejected) < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	if s := call(); s != 200 {
		t.Fatalf("an announcement that does not open dropped the key from the cache (%d)", s)
	}
	// The real one: sealed, the key's id nowhere in it.
	sub := rdb.Subscribe(ctx, ch)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	a.announceRevocation(ctx, rec.ID)
	for call() != 401 {
		time.Sleep(5 * time.Millisecond)
	}
	m := <-sub.Channel()
	if strings.Contains(m.Payload, rec.ID) {
		t.Fatalf("the announcement on Redis holds the key id %s in the clear", rec.ID)
	}
}

// TestRevocationSeal: an announcement opens only under its key, on its channel, whole,
// within revocationMaxAge of its seal.
func TestRevocationSeal(t *testing.T) {
	a := &App{revokeKey: bytes.Repeat([]byte{7}, 32)}
	b := &App{revokeKey: bytes.Repeat([]byte{8}, 32)}
	g := a.revocationAEAD()
	now := time.Now()
	m := sealRevocation(g, "p:keys:revoked", "0123456789abcdef", now)
	if id, err := openRevocation(g, "p:keys:revoked", m, now.Add(time.Minute)); err != nil || id != "0123456789abcdef" {
		t.Fatalf("open: %q %v", id, err)
	}
	flipped := bytes.Clone(m)
	flipped[5] ^= 1 // the seal time
	long := sealRevocation(g, "p:keys:revoked", strings.Repeat("x", revocationMaxID+1), now)
	for name, tc := range map[string]struct {
		msg     []byte
		g       *App
		channel string
		at      time.Time
	}{
		"another key":         {m, b, "p:keys:revoked", now},
		"another channel":     {m, a, "q:keys:revoked", now},
		"stale":               {m, a, "p:keys:revoked", now.Add(revocationMaxAge + time.Second)},
		"from the future":     {m, a, "p:keys:revoked", now.Add(-revocationMaxAge - time.Second)},
		"its time altered":    {flipped, a, "p:keys:revoked", now},
		"truncated":           {m[:len(m)-1], a, "p:keys:revoked", now},
		"the id in the clear": {[]byte("0123456789abcdef"), a, "p:keys:revoked", now},
		"empty":               {nil, a, "p:keys:revoked", now},
		"an id too long":      {long, a, "p:keys:revoked", now},
	} {
		if id, err := openRevocation(tc.g.revocationAEAD(), tc.channel, tc.msg, tc.at); err == nil {
			t.Errorf("%s: opened as %q", name, id)
		}
	}
}

// TestJournalPrewrittenSegmentsConfig: audit.journal_prewritten_segments reaches the
// request journal — by default the open segment grows (no descriptor open O_DIRECT after a
// rotation); with it (where the file system allows O_DIRECT) the segment opened after a
// rotation is a prepared one, open O_DIRECT.
func TestJournalPrewrittenSegmentsConfig(t *testing.T) {
	ctx := context.Background()
	for _, prewrite := range []bool{false, true} {
		t.Run(fmt.Sprintf("prewritten=%v", prewrite), func(t *testing.T) {
			a, _ := initApp(t, ctx, func(c *config.Config) {
				c.Audit.JournalPrewrittenSegments = prewrite
				c.Audit.RequestDurability = "synced" // the group commit's segments (written ones are not prewritten)
			})
			b := a.RequestRecords()
			ev := audit.Event{V: 1, TS: time.Now(), Kind: audit.KindRequest, Decision: audit.Allow,
				Actor: map[string]string{"principal": "p"}, Subject: map[string]string{"model": "m"}}
			if _, err := b.Submit(ctx, ev)(); err != nil {
				t.Fatal(err)
			}
			if _, _, err := b.Barrier(ctx); err != nil { // folds, and opens the next segment
				t.Fatal(err)
			}
			direct, open := journalFDs(t, a.requestJournal())
			switch {
			case open == 0:
				t.Fatal("no journal segment open after a rotation")
			case !prewrite && direct > 0:
				t.Fatalf("default: %d journal segments open O_DIRECT", direct)
			case prewrite && direct == 0:
				t.Skip("this file system refused O_DIRECT: segments grow")
			}
		})
	}
}

// journalFDs counts this process's open descriptors on segments under root, and those of
// them open O_DIRECT (/proc/self/fdinfo's flags).
func journalFDs(t *testing.T, root string) (direct, open int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc")
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || !strings.HasPrefix(target, root) || !strings.HasSuffix(target, ".wal") {
			continue
		}
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				flags, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
				open++
				if flags&syscall.O_DIRECT != 0 {
					direct++
				}
			}
		}
	}
	return direct, open
}

// TestRequestDurabilityConfig: by default request records are written (audit.
// request_durability "written": a shadow of the open segment on tmpfs names the journal);
// "synced" keeps the group commit (no shadow).
func TestRequestDurabilityConfig(t *testing.T) {
	if audit.ShadowBase != "/dev/shm" {
		t.Skip("no tmpfs at /dev/shm")
	}
	ctx := context.Background()
	for _, mode := range []string{"", "synced"} {
		t.Run("durability="+mode, func(t *testing.T) {
			a, _ := initApp(t, ctx, func(c *config.Config) { c.Audit.RequestDurability = mode })
			ev := audit.Event{V: 1, TS: time.Now(), Kind: audit.KindRequest, Decision: audit.Allow,
				Actor: map[string]string{"principal": "p"}, Subject: map[string]string{"model": "m"}}
			if _, err := a.RequestRecords().Submit(ctx, ev)(); err != nil {
				t.Fatal(err)
			}
			root, err := filepath.EvalSymlinks(a.requestJournal())
			if err != nil {
				t.Fatal(err)
			}
			markers, _ := filepath.Glob("/dev/shm/strongroom-journal-*/journal")
			shadowed := false
			for _, m := range markers {
				if b, err := os.ReadFile(m); err == nil && string(b) == root {
					shadowed = true
				}
			}
			if shadowed != (mode == "") {
				t.Fatalf("request_durability %q: a shadow of the open segment %v", mode, shadowed)
			}
		})
	}
}
