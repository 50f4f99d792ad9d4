// Package modelsig writes and verifies model signatures in the OpenSSF Model Signing (OMS)
// v1.0 format, so that a model unsealed by Strongroom verifies with the reference
// `model_signing verify key` tool and the reverse.
//
// # Format
//
// A signature file (model.sig) is a Sigstore bundle v0.3 (JSON):
//
//	{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
//	 "verificationMaterial": {"publicKey": {"rawBytes": BASE64(PEM public key),
//	                                        "keyDetails": "PKIX_ECDSA_P256_SHA_256" | "PKIX_ECDSA_P384_SHA_384"}},
//	 "dsseEnvelope": {"payload": BASE64(statement), "payloadType": "application/vnd.in-toto+json",
//	                  "signatures": [{"sig": BASE64(ASN.1 DER ECDSA signature), "keyid": null}]}}
//
// The signature is over the DSSE pre-authentication encoding
// "DSSEv1 " len(type) " " type " " len(payload) " " payload, hashed with SHA-256 for P-256 keys
// and SHA-384 for P-384 keys. The payload is an in-toto v1 statement:
//
//	{"_type": "https://in-toto.io/Statement/v1",
//	 "subject": [{"name": MODEL, "digest": {"sha256": HEX(SHA-256(d_1 || d_2 || ... ))}}],
//	 "predicateType": "https://model_signing/signature/v1.0",
//	 "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": false},
//	               "resources": [{"name": PATH, "digest": HEX, "algorithm": "sha256"}, ...]}}
//
// Resources are the model's files, named by slash-separated path relative to the model
// directory ("." for a model that is a single file), sorted by name; d_i is the raw digest
// of resource i. The verification key is the caller's trusted key, never the one the bundle
// carries: that one is only a hint.
package modelsig

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Constants of the format.
const (
	BundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
	PayloadType     = "application/vnd.in-toto+json"
	StatementType   = "https://in-toto.io/Statement/v1"
	PredicateType   = "https://model_signing/signature/v1.0"
	// MaxBundleSize caps what Verify parses.
	MaxBundleSize = 64 << 20
)

// ErrSignature is returned for every signature or manifest that fails to verify.
var ErrSignature = errors.New("model signature invalid")

// Resource is one signed file: its name and hex SHA-256 digest.
type Resource struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
}

// Manifest is what a verified signature vouches for.
type Manifest struct {
	Model     string
	Resources []Resource // sorted by Name
}

type bundle struct {
	MediaType            string `json:"mediaType"`
	VerificationMaterial struct {
		PublicKey struct {
			RawBytes   string `json:"rawBytes"`
			KeyDetails string `json:"keyDetails"`
		} `json:"publicKey"`
	} `json:"verificationMaterial"`
	DSSEEnvelope struct {
		Payload     string `json:"payload"`
		PayloadType string `json:"payloadType"`
		Signatures  []struct {
			Sig   string  `json:"sig"`
			KeyID *string `json:"keyid"`
		} `json:"signatures"`
	} `json:"dsseEnvelope"`
}

type statement struct {
	Type    string `json:"_type"`
	Subject []struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
	PredicateType string `json:"predicateType"`
	Predicate     struct {
		Serialization struct {
			Method        string `json:"method"`
			HashType      string `json:"hash_type"`
			AllowSymlinks bool   `json:"allow_symlinks"`
		} `json:"serialization"`
		Resources []struct {
			Name      string `json:"name"`
			Digest    string `json:"digest"`
			Algorithm string `json:"algorithm"`
		} `json:"resources"`
	} `json:"predicate"`
}

// pae is the DSSE pre-authentication encoding.
func pae(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 " + strconv.Itoa(len(payloadType)) + " " + payloadType + " " + strconv.Itoa(len(payload)) + " ")
	b.Write(payload)
	return b.Bytes()
}

func keyDetails(pub *ecdsa.PublicKey) (string, crypto.Hash, error) {
	switch pub.Curve {
	case elliptic.P256():
		return "PKIX_ECDSA_P256_SHA_256", crypto.SHA256, nil
	case elliptic.P384():
		return "PKIX_ECDSA_P384_SHA_384", crypto.SHA384, nil
	}
	return "", 0, fmt.Errorf("modelsig: unsupported curve %s (want P-256 or P-384)", pub.Curve.Params().Name)
}

func digest(h crypto.Hash, msg []byte) []byte {
	if h == crypto.SHA384 {
		d := sha512.Sum384(msg)
		return d[:]
	}
	d := sha256.Sum256(msg)
	return d[:]
}

// subjectDigest is SHA-256 over the concatenated raw resource digests, in name order.
func subjectDigest(rs []Resource) (string, error) {
	h := sha256.New()
	for _, r := range rs {
		d, err := hex.DecodeString(r.Digest)
		if err != nil || len(d) != sha256.Size {
			return "", fmt.Errorf("%w: resource %q: bad sha256 digest", ErrSignature, r.Name)
		}
		h.Write(d)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Sign returns a model.sig bundle for the model's resources.
func Sign(key *ecdsa.PrivateKey, model string, resources []Resource) ([]byte, error) {
	// Name order is byte order, which is the reference implementation's code point order.
	rs := slices.Clone(resources)
	slices.SortFunc(rs, func(a, b Resource) int { return strings.Compare(a.Name, b.Name) })
	subj, err := subjectDigest(rs)
	if err != nil {
		return nil, err
	}
	var st statement
	st.Type, st.PredicateType = StatementType, PredicateType
	st.Subject = append(st.Subject, struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	}{model, map[string]string{"sha256": subj}})
	st.Predicate.Serialization.Method = "files"
	st.Predicate.Serialization.HashType = "sha256"
	for _, r := range rs {
		st.Predicate.Resources = append(st.Predicate.Resources, struct {
			Name      string `json:"name"`
			Digest    string `json:"digest"`
			Algorithm string `json:"algorithm"`
		}{r.Name, r.Digest, "sha256"})
	}
	payload, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	details, h, err := keyDetails(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest(h, pae(PayloadType, payload)))
	if err != nil {
		return nil, fmt.Errorf("modelsig: sign: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	var b bundle
	b.MediaType = BundleMediaType
	b.VerificationMaterial.PublicKey.RawBytes = base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	b.VerificationMaterial.PublicKey.KeyDetails = details
	b.DSSEEnvelope.Payload = base64.StdEncoding.EncodeToString(payload)
	b.DSSEEnvelope.PayloadType = PayloadType
	b.DSSEEnvelope.Signatures = append(b.DSSEEnvelope.Signatures, struct {
		Sig   string  `json:"sig"`
		KeyID *string `json:"keyid"`
	}{Sig: base64.StdEncoding.EncodeToString(sig)})
	return json.Marshal(b)
}

// Verify checks a bundle's signature with the trusted key pub and the consistency of its
// statement, and returns the manifest it vouches for. It does not read any file: the
// caller compares the manifest with the digests of the files it holds.
func Verify(sig []byte, pub *ecdsa.PublicKey) (*Manifest, error) {
	bad := func(format string, args ...any) (*Manifest, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrSignature}, args...)...)
	}
	if len(sig) > MaxBundleSize {
		return bad("bundle larger than %d bytes", MaxBundleSize)
	}
	var b bundle
	if err := json.Unmarshal(sig, &b); err != nil {
		return bad("bundle is not JSON: %v", err)
	}
	if b.MediaType != BundleMediaType {
		return bad("media type %q", b.MediaType)
	}
	env := b.DSSEEnvelope
	if env.PayloadType != PayloadType {
		return bad("payload type %q", env.PayloadType)
	}
	if len(env.Signatures) != 1 {
		return bad("%d signatures, want 1", len(env.Signatures))
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return bad("payload is not base64")
	}
	rawSig, err := base64.StdEncoding.DecodeString(env.Signatures[0].Sig)
	if err != nil {
		return bad("signature is not base64")
	}
	_, h, err := keyDetails(pub)
	if err != nil {
		return nil, err
	}
	if !ecdsa.VerifyASN1(pub, digest(h, pae(env.PayloadType, payload)), rawSig) {
		return bad("signature does not verify with the trusted key")
	}
	var st statement
	if err := json.Unmarshal(payload, &st); err != nil {
		return bad("statement is not JSON: %v", err)
	}
	if st.Type != StatementType || st.PredicateType != PredicateType {
		return bad("statement type %q, predicate type %q", st.Type, st.PredicateType)
	}
	if s := st.Predicate.Serialization; s.Method != "files" || s.HashType != "sha256" {
		return bad("serialization %q/%q not supported", s.Method, s.HashType)
	}
	if len(st.Subject) != 1 {
		return bad("%d subjects, want 1", len(st.Subject))
	}
	m := &Manifest{Model: st.Subject[0].Name}
	for _, r := range st.Predicate.Resources {
		if r.Algorithm != "sha256" {
			return bad("resource %q: algorithm %q", r.Name, r.Algorithm)
		}
		m.Resources = append(m.Resources, Resource{Name: r.Name, Digest: r.Digest})
	}
	if !slices.IsSortedFunc(m.Resources, func(a, b Resource) int { return strings.Compare(a.Name, b.Name) }) {
		return bad("resources not sorted by name")
	}
	for i := 1; i < len(m.Resources); i++ {
		if m.Resources[i].Name == m.Resources[i-1].Name {
			return bad("resource %q listed twice", m.Resources[i].Name)
		}
	}
	subj, err := subjectDigest(m.Resources)
	if err != nil {
		return nil, err
	}
	if st.Subject[0].Digest["sha256"] != subj {
		return bad("subject digest does not match the resources")
	}
	return m, nil
}

// ParsePublicKeyPEM reads a PKIX "PUBLIC KEY" PEM block holding an ECDSA key.
func ParsePublicKeyPEM(b []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("modelsig: no PUBLIC KEY PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("modelsig: public key: %w", err)
	}
	ec, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.New("modelsig: public key is not ECDSA")
	}
	return ec, nil
}
