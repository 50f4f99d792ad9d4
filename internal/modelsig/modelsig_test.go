package modelsig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const vecDir = "testdata/oms-v1.0.0-elliptic-key"

func readVector(t *testing.T) (sig []byte, pub *ecdsa.PublicKey, file []byte) {
	t.Helper()
	sig, err := os.ReadFile(filepath.Join(vecDir, "model.sig"))
	if err != nil {
		t.Fatal(err)
	}
	pemb, err := os.ReadFile(filepath.Join(vecDir, "key.pub.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err = ParsePublicKeyPEM(pemb)
	if err != nil {
		t.Fatal(err)
	}
	file, err = os.ReadFile(filepath.Join(vecDir, "signme-1"))
	if err != nil {
		t.Fatal(err)
	}
	return sig, pub, file
}

// verifyModel is what a caller does: verify the bundle, then compare the file's digest.
func verifyModel(sig []byte, pub *ecdsa.PublicKey, file []byte) error {
	m, err := Verify(sig, pub)
	if err != nil {
		return err
	}
	d := sha256.Sum256(file)
	if len(m.Resources) != 1 || m.Resources[0].Name != "." || m.Resources[0].Digest != hex.EncodeToString(d[:]) {
		return ErrSignature
	}
	return nil
}

// TestReferenceVector: the reference implementation's own output verifies.
func TestReferenceVector(t *testing.T) {
	sig, pub, file := readVector(t)
	m, err := Verify(sig, pub)
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{Model: "signme-1", Resources: []Resource{{".", "bc9a717db6064a32cbe9eae6fc40651dd6d36ef1757183f590eff2b1765d7ebc"}}}
	if diff := cmp.Diff(want, m); diff != "" {
		t.Fatalf("manifest (-want +got):\n%s", diff)
	}
	if err := verifyModel(sig, pub, file); err != nil {
		t.Fatal(err)
	}
}

// TestReferenceVectorTampered: any changed byte of the file, the payload or the signature
// is rejected.
func TestReferenceVectorTampered(t *testing.T) {
	sig, pub, file := readVector(t)
	for i := range file {
		bad := []byte(string(file))
		bad[i] ^= 1
		if verifyModel(sig, pub, bad) == nil {
			t.Fatalf("file byte %d changed: accepted", i)
		}
	}
	var b map[string]any
	json.Unmarshal(sig, &b)
	env := b["dsseEnvelope"].(map[string]any)
	for _, field := range []string{"payload", "sig"} {
		var get func() string
		var set func(string)
		if field == "payload" {
			get, set = func() string { return env["payload"].(string) }, func(s string) { env["payload"] = s }
		} else {
			s0 := env["signatures"].([]any)[0].(map[string]any)
			get, set = func() string { return s0["sig"].(string) }, func(s string) { s0["sig"] = s }
		}
		orig := get()
		raw, _ := base64.StdEncoding.DecodeString(orig)
		for i := range raw {
			bad := []byte(string(raw))
			bad[i] ^= 0x10
			set(base64.StdEncoding.EncodeToString(bad))
			tampered, _ := json.Marshal(b)
			if _, err := Verify(tampered, pub); !errors.Is(err, ErrSignature) {
				t.Fatalf("%s byte %d changed: %v", field, i, err)
			}
		}
		set(orig)
	}
	// Another key must not verify the reference bundle.
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := Verify(sig, &other.PublicKey); !errors.Is(err, ErrSignature) {
		t.Fatalf("verified with another key: %v", err)
	}
}

func TestSignVerify(t *testing.T) {
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		key, _ := ecdsa.GenerateKey(curve, rand.Reader)
		d1, d2 := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("b"))
		rs := []Resource{{"weights/model.safetensors", hex.EncodeToString(d2[:])}, {"config.json", hex.EncodeToString(d1[:])}}
		sig, err := Sign(key, "demo", rs)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Verify(sig, &key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		want := &Manifest{Model: "demo", Resources: []Resource{rs[1], rs[0]}}
		if diff := cmp.Diff(want, m); diff != "" {
			t.Fatalf("(-want +got):\n%s", diff)
		}
		// The bundle's shape matches the reference implementation's.
		var b bundle
		json.Unmarshal(sig, &b)
		if b.MediaType != BundleMediaType || b.DSSEEnvelope.PayloadType != PayloadType {
			t.Fatalf("bundle shape: %+v", b)
		}
		pemb, _ := base64.StdEncoding.DecodeString(b.VerificationMaterial.PublicKey.RawBytes)
		if hinted, err := ParsePublicKeyPEM(pemb); err != nil || !hinted.Equal(&key.PublicKey) {
			t.Fatalf("bundle's public key hint: %v", err)
		}
	}
}

func TestSignRejectsBadDigest(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := Sign(key, "m", []Resource{{"a", "zz"}}); err == nil {
		t.Fatal("bad digest signed")
	}
}

func FuzzVerify(f *testing.F) {
	sig, _ := os.ReadFile(filepath.Join(vecDir, "model.sig"))
	f.Add(sig)
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	pemb, _ := os.ReadFile(filepath.Join(vecDir, "key.pub.pem"))
	pub, _ := ParsePublicKeyPEM(pemb)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Verify(b, pub)
		if err == nil && m == nil {
			t.Fatal("nil manifest without error")
		}
	})
}
