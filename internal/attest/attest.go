// Package attest verifies that a runtime asking for a model key runs where it claims to —
// in an AMD SEV-SNP or Intel TDX confidential VM with an allowed measurement, or (dev) on a
// machine that only holds a software key — and that the evidence was made for this request:
// its 64-byte user data must equal Binding(runtime's ephemeral HPKE key, control-plane nonce).
package attest

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors callers act on; each refusal wraps one.
var (
	// ErrInvalid is evidence that does not verify: bad signature, untrusted chain, malformed.
	ErrInvalid = errors.New("attestation invalid")
	// ErrBinding is valid evidence made for another key or nonce (replayed or stolen).
	ErrBinding = errors.New("attestation bound to another key or nonce")
	// ErrUnsupported is an evidence type with no verifier configured.
	ErrUnsupported = errors.New("attestation type not supported")
)

// Evidence types.
const (
	TypeDev = "dev"
	TypeSEV = "sev-snp"
	TypeTDX = "tdx"
)

// Evidence is what a runtime sends: a type and its raw bytes (a SEV-SNP report with its
// certificate table, a TDX quote, or a dev signature).
type Evidence struct {
	Type string `json:"type"`
	Blob []byte `json:"blob"`
}

// Claims is what the evidence must prove, and what the verifier may use to check it.
type Claims struct {
	Binding  [64]byte
	Identity any // the runtime's certificate public key (the dev verifier checks against it)
}

// Result is a verified attestation.
type Result struct {
	Type        string
	TEE         bool   // hardware-rooted (SEV-SNP, TDX); false for dev
	Measurement string // hex launch measurement (SEV-SNP MEASUREMENT, TDX MR_TD); "" for dev
	Allowed     bool   // the measurement is on the allowlist for its type
	Debug       bool   // the guest allows debugging (its memory is not confidential)
}

// String is the short form recorded on a lease and in the audit log.
func (r Result) String() string {
	if r.Measurement == "" {
		return r.Type
	}
	return r.Type + ":" + r.Measurement
}

// Verifier checks one kind of evidence.
type Verifier interface {
	Verify(ctx context.Context, ev Evidence, c Claims) (Result, error)
}

// Binding is the user data a runtime's evidence must carry: SHA-512 over a label, its
// ephemeral HPKE public key and the control plane's single-use nonce. SHA-512 fills the
// 64-byte REPORT_DATA field of both SEV-SNP and TDX exactly.
func Binding(publicKey, nonce []byte) [64]byte {
	h := sha512.New()
	h.Write([]byte("strongroom/attest/v1\x00"))
	h.Write([]byte{byte(len(publicKey))})
	h.Write(publicKey)
	h.Write(nonce)
	var out [64]byte
	h.Sum(out[:0])
	return out
}

// Set dispatches to a verifier by type and applies the measurement allowlist.
type Set struct {
	Verifiers map[string]Verifier
	// Allow lists allowed hex measurements per type; a TEE result not on it has Allowed false
	// (policy decides what that means; the baseline refuses restricted models).
	Allow map[string][]string
}

// Verify checks ev against c.
func (s Set) Verify(ctx context.Context, ev Evidence, c Claims) (Result, error) {
	v, ok := s.Verifiers[ev.Type]
	if !ok {
		return Result{}, fmt.Errorf("%w: %q", ErrUnsupported, ev.Type)
	}
	r, err := v.Verify(ctx, ev, c)
	if err != nil {
		return Result{}, err
	}
	r.Allowed = r.TEE && slices.ContainsFunc(s.Allow[r.Type], func(m string) bool { return strings.EqualFold(m, r.Measurement) })
	return r, nil
}

func hexOf(b []byte) string { return hex.EncodeToString(b) }
