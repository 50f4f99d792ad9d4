package kms

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/testenv"
)

// testKEK is the conformance test every provider passes.
func testKEK(t *testing.T, k, other KEK) {
	ctx := context.Background()
	dek, _ := NewDEK()
	w, err := k.Wrap(ctx, dek, []byte("key-1"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(w, dek) {
		t.Fatal("wrapped key contains the plaintext key")
	}
	got, err := k.Unwrap(ctx, w, []byte("key-1"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, dek) {
		t.Fatal("unwrap returned a different key")
	}
	w2, _ := k.Wrap(ctx, dek, []byte("key-1"))
	if bytes.Equal(w, w2) {
		t.Fatal("wrapping is deterministic: nonce reused")
	}
	if _, err := k.Unwrap(ctx, w, []byte("key-2")); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("unwrap under another record's aad: %v", err)
	}
	for i := range w {
		bad := bytes.Clone(w)
		bad[i] ^= 0x80
		if _, err := k.Unwrap(ctx, bad, []byte("key-1")); !errors.Is(err, ErrUnwrap) {
			t.Fatalf("altered byte %d: %v", i, err)
		}
	}
	if _, err := other.Unwrap(ctx, w, []byte("key-1")); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("another KEK unwrapped: %v", err)
	}
	if _, err := k.Unwrap(ctx, nil, nil); !errors.Is(err, ErrUnwrap) {
		t.Fatalf("empty wrapped key: %v", err)
	}
}

func newLocal(t *testing.T, name string) *Local {
	dir := t.TempDir()
	id, err := GenerateLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	k, err := OpenLocal(LocalPath(dir, id))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLocal(t *testing.T) {
	testKEK(t, newLocal(t, "a"), newLocal(t, "b"))
}

func TestLocalRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	id, err := GenerateLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := LocalPath(dir, id)
	if k, err := OpenLocal(p); err != nil || k.ID() != id {
		t.Fatalf("OpenLocal: %v", err)
	}
	os.Chmod(p, 0o640)
	if _, err := OpenLocal(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key file accepted: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("strongroom-kek-v1 x c2hvcnQ=\n"), 0o600)
	if _, err := OpenLocal(bad); err == nil {
		t.Fatal("short key accepted")
	}
	if _, err := OpenLocal(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing key file accepted")
	}
}

// pkcs11Config is the SoftHSM2 token that scripts/test creates.
func pkcs11Config(t *testing.T, keyLabel string) PKCS11Config {
	return PKCS11Config{
		Module:     testenv.Get(t, "STRONGROOM_TEST_PKCS11_MODULE"),
		TokenLabel: testenv.Get(t, "STRONGROOM_TEST_PKCS11_TOKEN"),
		PIN:        testenv.Get(t, "STRONGROOM_TEST_PKCS11_PIN"),
		KeyLabel:   keyLabel,
	}
}

func TestPKCS11SoftHSM(t *testing.T) {
	label := "kek-" + strings.ReplaceAll(t.Name(), "/", "-") + "-" + filepath.Base(t.TempDir())
	cfg := pkcs11Config(t, label)
	if _, err := OpenPKCS11(cfg, false); err == nil {
		t.Fatal("opened a key that does not exist")
	}
	k, err := OpenPKCS11(cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	testKEK(t, k, newLocal(t, "other"))

	// The key persists on the token: a second login finds it and unwraps.
	dek, _ := NewDEK()
	w, err := k.Wrap(context.Background(), dek, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	k.Close()
	k2, err := OpenPKCS11(cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer k2.Close()
	got, err := k2.Unwrap(context.Background(), w, []byte("x"))
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("unwrap after re-login: %v", err)
	}
	bad := cfg
	bad.PIN = "wrong"
	if _, err := OpenPKCS11(bad, false); err == nil {
		t.Fatal("wrong PIN accepted")
	}
}
