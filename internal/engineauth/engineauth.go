// Package engineauth authenticates the gateway to the engines behind it. The launcher (or
// the operator) gives the gateway and the engine one secret per run: the gateway sends it as
// a bearer token on every request, so nobody else on the engine's network can use the
// engine, and signs the tenant whose watermark an answer must carry with it, so that no
// caller can have text marked as another tenant's.
//
// # Wire format
//
//	Authorization: Bearer <secret>
//	X-Strongroom-Tenant: <tenant>
//	X-Strongroom-Tenant-Sig: hex(HMAC-SHA256(secret, "strongroom-tenant/v1\n" || tenant || "\n" || SHA-256(body)))
//
// The signature binds the tenant to the request body, so a signed header cannot be moved to
// another request.
package engineauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
)

// Headers set by the gateway.
const (
	TenantHeader    = "X-Strongroom-Tenant"
	TenantSigHeader = "X-Strongroom-Tenant-Sig"
	// WatermarkHeader on an engine's answer says whether it watermarked it ("applied") or
	// not ("none"): the gateway records what the engine did, not what it asked for.
	WatermarkHeader = "X-Strongroom-Watermark"
	// KeyEnv is the environment variable that hands an engine its secret (hex).
	KeyEnv = "STRONGROOM_ENGINE_KEY"
)

// SignTenant returns the signature header value for tenant on a request with body.
func SignTenant(key []byte, tenant string, body []byte) string {
	sum := sha256.Sum256(body)
	m := hmac.New(sha256.New, key)
	m.Write([]byte("strongroom-tenant/v1\n"))
	m.Write([]byte(tenant))
	m.Write([]byte("\n"))
	m.Write(sum[:])
	return hex.EncodeToString(m.Sum(nil))
}

// VerifyTenant checks a tenant signature in constant time.
func VerifyTenant(key []byte, tenant, sig string, body []byte) bool {
	want := SignTenant(key, tenant, body)
	return len(key) > 0 && hmac.Equal([]byte(want), []byte(sig))
}

// Authorized says whether r carries the bearer secret (compared in constant time).
func Authorized(r *http.Request, key []byte) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && len(key) > 0 && subtle.ConstantTimeCompare([]byte(tok), key) == 1
}
