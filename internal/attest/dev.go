package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// Dev verifies software attestation: a signature over the binding by the key of the
// runtime's own certificate. It proves possession of the identity key and freshness, nothing
// about the machine; Result.TEE is false so policy can refuse it for restricted models.
type Dev struct{}

var _ Verifier = Dev{}

func devDigest(b [64]byte) []byte {
	d := sha256.Sum256(append([]byte("strongroom/attest/dev/v1\x00"), b[:]...))
	return d[:]
}

// Verify checks the signature against c.Identity.
func (Dev) Verify(_ context.Context, ev Evidence, c Claims) (Result, error) {
	d := devDigest(c.Binding)
	ok := false
	switch k := c.Identity.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, d, ev.Blob)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, d, ev.Blob)
	default:
		return Result{}, fmt.Errorf("%w: dev attestation needs an ECDSA or Ed25519 identity key, have %T", ErrInvalid, c.Identity)
	}
	if !ok {
		// The signature is by the runtime's own key, so a mismatch is either forgery or a
		// signature over another binding; both are refused as a binding failure.
		return Result{}, fmt.Errorf("%w: dev signature does not match this key and nonce", ErrBinding)
	}
	return Result{Type: TypeDev}, nil
}

// DevEvidence is the runtime side: it signs the binding with its identity key.
func DevEvidence(key crypto.Signer, binding [64]byte) (Evidence, error) {
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := key.Public().(ed25519.PublicKey); ok {
		opts = crypto.Hash(0)
	}
	sig, err := key.Sign(rand.Reader, devDigest(binding), opts)
	if err != nil {
		return Evidence{}, err
	}
	return Evidence{Type: TypeDev, Blob: sig}, nil
}
