package authn

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/store"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func setup(t *testing.T) (*Keys, *clock, store.Store) {
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.PutPrincipal(context.Background(), store.Principal{ID: "alice", Tenant: "acme", Screening: "clear"})
	c := &clock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	return NewKeys(st, c.now, 5*time.Second), c, st
}

func TestKeyLifecycle(t *testing.T) {
	ctx := context.Background()
	k, c, st := setup(t)
	tok, rec, err := k.Create(ctx, "alice", time.Hour, []string{"m1"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "sr_"+rec.ID+".") {
		t.Fatalf("token %q does not start with its key id", tok)
	}
	stored, _ := st.GetAPIKey(ctx, rec.ID)
	if strings.Contains(string(stored.Hash), tok[20:]) {
		t.Fatal("secret stored")
	}
	p, err := k.Authenticate(ctx, tok)
	if err != nil || p.ID != "alice" || p.Tenant != "acme" || !p.MayUse("m1") || p.MayUse("m2") {
		t.Fatalf("authenticate: %+v, %v", p, err)
	}
	// A wrong secret with the right id, garbage, and an unknown id all fail.
	bad := tok[:len(tok)-2] + "AA"
	for _, b := range []string{bad, "", "Bearer x", "sr_0000000000000000." + strings.Repeat("A", 43), tok + "x"} {
		if _, err := k.Authenticate(ctx, b); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("token %q: %v", b, err)
		}
	}
	// Rotation: both work during the overlap, only the new one after.
	tok2, rec2, err := k.Rotate(ctx, rec.ID, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Authenticate(ctx, tok); err != nil {
		t.Fatalf("old key during overlap: %v", err)
	}
	c.t = c.t.Add(11 * time.Minute)
	if _, err := k.Authenticate(ctx, tok); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("old key after overlap: %v", err)
	}
	if _, err := k.Authenticate(ctx, tok2); err != nil {
		t.Fatalf("new key: %v", err)
	}
	// Expiry.
	c.t = c.t.Add(time.Hour)
	if _, err := k.Authenticate(ctx, tok2); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("expired key: %v", err)
	}
	// Revocation takes effect at once on this instance, within the cache TTL on others.
	tok3, rec3, _ := k.Create(ctx, "alice", 0, nil)
	other := NewKeys(st, c.now, 5*time.Second)
	if _, err := other.Authenticate(ctx, tok3); err != nil {
		t.Fatal(err)
	}
	if err := k.Revoke(ctx, rec3.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Authenticate(ctx, tok3); !errors.Is(err, ErrUnauthenticated) {
		t.Fatal("revoked key accepted")
	}
	c.t = c.t.Add(6 * time.Second)
	if _, err := other.Authenticate(ctx, tok3); !errors.Is(err, ErrUnauthenticated) {
		t.Fatal("revoked key accepted by another instance after the cache TTL")
	}
	if _, _, err := k.Create(ctx, "nobody", 0, nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("key for unknown principal: %v", err)
	}
	_ = rec2
}

func FuzzParseToken(f *testing.F) {
	f.Add("sr_0123456789abcdef." + strings.Repeat("A", 43))
	f.Add("")
	f.Add("sr_0123456789ABCDEF." + strings.Repeat("A", 42) + "B") // non-zero trailing bits: refused
	f.Add("sr_0123456789abcdeg." + strings.Repeat("_", 43))
	f.Add("sr_0123456789abcdef." + strings.Repeat("-", 43) + "=")
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, err := ParseToken(s)
		if err == nil && (len(id) != idLen || len(secret) != secretLen) {
			t.Fatalf("accepted %q", s)
		}
		// The library's reading: hex for the id, strict unpadded URL base64 for the secret.
		wantID, wantSecret, wantErr := refParseToken(s)
		if err != nil && wantErr == nil && strings.ContainsAny(s, "\r\n") {
			return // encoding/base64 skips CR and LF in an encoding; a key has one spelling here
		}
		if (err == nil) != (wantErr == nil) || id != wantID || !bytes.Equal(secret, wantSecret) {
			t.Fatalf("%q: read as (%q, %x, %v), the libraries' reading (%q, %x, %v)", s, id, secret, err, wantID, wantSecret, wantErr)
		}
	})
}

// refParseToken is a token read with encoding/hex and encoding/base64 (what ParseToken did
// before it stopped allocating).
func refParseToken(tok string) (string, []byte, error) {
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok || len(rest) < idLen+1 || rest[idLen] != '.' {
		return "", nil, errors.New("not a key")
	}
	if _, err := hex.DecodeString(rest[:idLen]); err != nil {
		return "", nil, err
	}
	secret, err := base64.RawURLEncoding.Strict().DecodeString(rest[idLen+1:])
	if err != nil || len(secret) != secretLen {
		return "", nil, errors.New("bad secret")
	}
	return rest[:idLen], secret, nil
}

// TestParseTokenAllocates nothing: a key is read on every request.
func TestParseTokenAllocates(t *testing.T) {
	tok := "sr_0123456789abcdef." + strings.Repeat("A", 43)
	var secret [secretLen]byte
	if allocs := testing.AllocsPerRun(50, func() {
		if _, err := parseToken(tok, &secret); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("%.0f allocations reading a key, want 0", allocs)
	}
}

// TestRevocationByAnotherProcess: a key revoked by another process (the CLI, another
// replica: here a second Keys on the same store) stops working within Watch's interval, not
// after the cache TTL (issue 12, finding 12).
func TestRevocationByAnotherProcess(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.PutPrincipal(ctx, store.Principal{ID: "alice", Tenant: "acme", Screening: "clear"})
	gateway := NewKeys(st, nil, time.Hour) // a long TTL: only Watch can make it notice
	tok, rec, err := gateway.Create(ctx, "alice", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gateway.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := NewKeys(st, nil, time.Hour).Revoke(ctx, rec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := gateway.Authenticate(ctx, tok); err != nil {
		t.Fatal("cache dropped without Watch: the test would not show Watch works")
	}
	go gateway.Watch(ctx, 10*time.Millisecond)
	for {
		if _, err := gateway.Authenticate(ctx, tok); errors.Is(err, ErrUnauthenticated) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// downStore is a store that can be made unreachable.
type downStore struct {
	store.Store
	down atomic.Bool
}

var errDown = errors.New("connection refused")

func (d *downStore) GetAPIKey(ctx context.Context, id string) (store.APIKey, error) {
	if d.down.Load() {
		return store.APIKey{}, errDown
	}
	return d.Store.GetAPIKey(ctx, id)
}

func (d *downStore) RevokedAPIKeys(ctx context.Context, since time.Time) ([]string, error) {
	if d.down.Load() {
		return nil, errDown
	}
	return d.Store.RevokedAPIKeys(ctx, since)
}

type atomicClock struct{ ns atomic.Int64 }

func (c *atomicClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *atomicClock) add(d time.Duration) { c.ns.Add(int64(d)) }
func (c *atomicClock) set(t time.Time)     { c.ns.Store(t.UnixNano()) }

// TestStoreOutage: the store going away is not a bad key. Keys verified before the
// outage go on working, marked Unverified (the gateway serves them public models only),
// for StoreGrace; unknown keys, and every key after the grace, are ErrStoreUnavailable
// (503), never ErrUnauthenticated (401); when the store is back, keys are verified again.
func TestStoreOutage(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, _, st := setup(t)
	ds := &downStore{Store: st}
	clk := &atomicClock{}
	clk.set(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC))
	k := NewKeys(ds, clk.now, 5*time.Second)
	tok, _, err := k.Create(ctx, "alice", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _, _ := k.Create(ctx, "alice", 0, nil)
	if p, err := k.Authenticate(ctx, tok); err != nil || p.Unverified {
		t.Fatalf("before the outage: %+v %v", p, err)
	}
	go k.Watch(ctx, time.Millisecond)
	ds.down.Store(true)
	for k.failingSince.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	clk.add(10 * time.Second) // past the cache TTL: the store is asked, and cannot answer
	p, err := k.Authenticate(ctx, tok)
	if err != nil || !p.Unverified || p.ID != "alice" {
		t.Fatalf("a known key during the outage: %+v %v", p, err)
	}
	if _, err := k.Authenticate(ctx, other); !errors.Is(err, ErrStoreUnavailable) || errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("a key never seen here during the outage: %v", err)
	}
	if _, err := k.Authenticate(ctx, "sr_0123456789abcdef.AAAA"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("a malformed token during the outage: %v", err)
	}
	clk.add(StoreGrace)
	if _, err := k.Authenticate(ctx, tok); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("after the grace: %v", err)
	}
	ds.down.Store(false)
	if p, err := k.Authenticate(ctx, tok); err != nil || p.Unverified {
		t.Fatalf("the store is back: %+v %v", p, err)
	}
	for k.failingSince.Load() != 0 {
		time.Sleep(time.Millisecond)
	}
	if p, err := k.Authenticate(ctx, other); err != nil || p.Unverified {
		t.Fatalf("the store is back, Watch too: %+v %v", p, err)
	}
}
