package custody

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

type recorder struct {
	mu     sync.Mutex
	events []string
	fail   bool
}

func (r *recorder) audit(_ context.Context, kind, decision, reason string, _, _ map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("log down")
	}
	r.events = append(r.events, kind+" "+decision)
	return nil
}

var dek = bytes.Repeat([]byte{7}, 32)

func setup(t *testing.T) (*Manager, *clock, *recorder, *bool) {
	c := &clock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	rec := &recorder{}
	allow := true
	keys := func(_ context.Context, model, version string) (string, string, []byte, error) {
		if model != "frontier" {
			return "", "", nil, errors.New("unknown model")
		}
		return "key-1", "restricted", bytes.Clone(dek), nil
	}
	decide := func(_ context.Context, r Request, class string) (bool, string) {
		if !allow || r.Runtime.Env != "prod" {
			return false, "runtime not permitted for " + class
		}
		return true, "prod runtime"
	}
	return NewManager(decide, keys, rec.audit, 10*time.Minute, c.now), c, rec, &allow
}

func runtimeKey(t *testing.T) *ecdh.PrivateKey {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGrantOpenRenewRevoke(t *testing.T) {
	ctx := context.Background()
	m, c, rec, allow := setup(t)
	priv := runtimeKey(t)
	rt := Runtime{ID: "rt-1", Env: "prod", Region: "eu"}
	l, sealed, err := m.Grant(ctx, Request{Runtime: rt, Model: "frontier", Version: "1", PublicKey: priv.PublicKey().Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, dek) {
		t.Fatal("sealed key contains the plaintext key")
	}
	got, err := OpenKey(priv, l, sealed)
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("runtime could not open its key: %v", err)
	}
	// Another runtime's key, or the sealed key under another lease, does not open.
	if _, err := OpenKey(runtimeKey(t), l, sealed); err == nil {
		t.Fatal("another runtime opened the key")
	}
	other := *l
	other.ID = "another-lease"
	if _, err := OpenKey(priv, &other, sealed); err == nil {
		t.Fatal("sealed key opened under another lease")
	}
	// Renewal extends; a policy change is enforced at renewal.
	c.t = c.t.Add(5 * time.Minute)
	nl, err := m.Renew(ctx, l.ID)
	if err != nil || !nl.ExpiresAt.Equal(c.t.Add(10*time.Minute)) {
		t.Fatalf("renew: %+v %v", nl, err)
	}
	*allow = false
	if _, err := m.Renew(ctx, l.ID); !errors.Is(err, ErrDenied) {
		t.Fatalf("renew after policy change: %v", err)
	}
	*allow = true
	if live := m.Live(); len(live) != 1 || live[0].Runtime.Host != "" || live[0].Model != "frontier" {
		t.Fatalf("live: %+v", live)
	}
	// Revocation by model ends it; renewal after revocation is refused.
	revoked, err := m.Revoke(ctx, Selector{Model: "frontier"}, "incident")
	if err != nil || len(revoked) != 1 {
		t.Fatalf("revoke: %v %v", revoked, err)
	}
	if _, err := m.Renew(ctx, l.ID); !errors.Is(err, ErrRevoked) {
		t.Fatalf("renew after revoke: %v", err)
	}
	if len(m.Live()) != 0 {
		t.Fatal("revoked lease still live")
	}
	want := "lease.grant allow,lease.renew allow,lease.renew deny,lease.revoke allow,lease.renew deny"
	if got := strings.Join(rec.events, ","); got != want {
		t.Fatalf("audit trail %q, want %q", got, want)
	}
}

func TestExpiryDenialAndFailClosed(t *testing.T) {
	ctx := context.Background()
	m, c, rec, _ := setup(t)
	priv := runtimeKey(t)
	req := Request{Runtime: Runtime{ID: "rt", Env: "prod"}, Model: "frontier", Version: "1", PublicKey: priv.PublicKey().Bytes()}
	l, _, err := m.Grant(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(11 * time.Minute)
	if _, err := m.Renew(ctx, l.ID); !errors.Is(err, ErrExpired) {
		t.Fatalf("renew after expiry: %v", err)
	}
	dev := req
	dev.Runtime.Env = "dev"
	if _, _, err := m.Grant(ctx, dev); !errors.Is(err, ErrDenied) {
		t.Fatalf("dev runtime on a restricted model: %v", err)
	}
	bad := req
	bad.PublicKey = []byte("short")
	if _, _, err := m.Grant(ctx, bad); err == nil {
		t.Fatal("bad runtime key accepted")
	}
	rec.fail = true
	if _, sealed, err := m.Grant(ctx, req); err == nil || sealed != nil {
		t.Fatal("key released without an audit record")
	}
	if _, err := m.Renew(ctx, "nope"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown lease: %v", err)
	}
}

func BenchmarkGrant(b *testing.B) {
	m, _, _, _ := setup(&testing.T{})
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	req := Request{Runtime: Runtime{ID: "rt", Env: "prod"}, Model: "frontier", Version: "1", PublicKey: priv.PublicKey().Bytes()}
	for b.Loop() {
		if _, _, err := m.Grant(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
