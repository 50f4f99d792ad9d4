package kms

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"path/filepath"
	"testing"

	"github.com/strongroom/strongroom/internal/store"
)

func newStore(t *testing.T) store.Store {
	s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// flaky fails to wrap after n keys, like a token that goes away mid-rotation.
type flaky struct {
	KEK
	n int
}

func (f *flaky) Wrap(ctx context.Context, dek, aad []byte) ([]byte, error) {
	if f.n <= 0 {
		return nil, errors.New("token removed")
	}
	f.n--
	return f.KEK.Wrap(ctx, dek, aad)
}

func TestKeyringRotate(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	a, b, c := newLocal(t, "a"), newLocal(t, "b"), newLocal(t, "c")
	ring := NewKeyring(s, a, nil, nil)
	want := map[string][]byte{}
	for range 3 {
		id, dek, err := ring.NewKey(ctx, store.PurposeModel)
		if err != nil {
			t.Fatal(err)
		}
		want[hex.EncodeToString(id[:])] = dek
	}
	// Nothing in the store holds a plaintext key.
	keys, _ := s.ListKeys(ctx)
	for _, k := range keys {
		if bytes.Contains(k.Wrapped, want[k.ID]) || k.KEKID != a.ID() {
			t.Fatalf("key %s stored badly", k.ID)
		}
	}

	// A rotation that fails half-way changes nothing.
	if _, err := ring.Rotate(ctx, &flaky{KEK: c, n: 1}); err == nil {
		t.Fatal("failed rotation reported success")
	}
	keys, _ = s.ListKeys(ctx)
	for _, k := range keys {
		if k.KEKID != a.ID() {
			t.Fatalf("key %s moved by a failed rotation", k.ID)
		}
	}

	n, err := ring.Rotate(ctx, b)
	if err != nil || n != 3 {
		t.Fatalf("Rotate = %d, %v", n, err)
	}
	for id, dek := range want {
		got, err := ring.Key(ctx, id)
		if err != nil || !bytes.Equal(got, dek) {
			t.Fatalf("key %s after rotation: %v", id, err)
		}
	}
	// The old KEK no longer opens anything; a keyring with only the old KEK fails closed.
	old := NewKeyring(s, a, nil, nil)
	for id := range want {
		if _, err := old.Key(ctx, id); err == nil {
			t.Fatal("old KEK still unwraps after rotation")
		}
	}
	// A keyring whose current KEK is another one finds b through the resolver.
	resolved := NewKeyring(s, c, func(_ context.Context, id string) (KEK, error) {
		if id == b.ID() {
			return b, nil
		}
		return nil, errors.New("unknown")
	}, nil)
	for id, dek := range want {
		if got, err := resolved.Key(ctx, id); err != nil || !bytes.Equal(got, dek) {
			t.Fatalf("resolved key %s: %v", id, err)
		}
	}
}

// TestKeyringRotateToHSM moves every key from a local KEK to a key on the SoftHSM2 token.
func TestKeyringRotateToHSM(t *testing.T) {
	cfg := pkcs11Config(t, "rotate-"+filepath.Base(t.TempDir()))
	ctx := context.Background()
	s := newStore(t)
	local := newLocal(t, "a")
	ring := NewKeyring(s, local, nil, nil)
	id, dek, err := ring.NewKey(ctx, store.PurposeModel)
	if err != nil {
		t.Fatal(err)
	}
	hsm, err := OpenPKCS11(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer hsm.Close()
	if _, err := ring.Rotate(ctx, hsm); err != nil {
		t.Fatal(err)
	}
	k, _ := s.GetKey(ctx, hex.EncodeToString(id[:]))
	if k.KEKID != hsm.ID() {
		t.Fatalf("key wrapped by %s after rotation to HSM", k.KEKID)
	}
	got, err := NewKeyring(s, hsm, nil, nil).Key(ctx, k.ID)
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("unwrap via HSM: %v", err)
	}
}
