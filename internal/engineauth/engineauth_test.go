package engineauth

import (
	"net/http"
	"testing"
)

func TestTenantSignature(t *testing.T) {
	key, body := []byte("k1"), []byte(`{"model":"m"}`)
	sig := SignTenant(key, "acme", body)
	if !VerifyTenant(key, "acme", sig, body) {
		t.Fatal("valid signature refused")
	}
	for name, ok := range map[string]bool{
		"other tenant": VerifyTenant(key, "evil", sig, body),
		"other body":   VerifyTenant(key, "acme", sig, []byte(`{"model":"n"}`)),
		"other key":    VerifyTenant([]byte("k2"), "acme", sig, body),
		"no key":       VerifyTenant(nil, "acme", SignTenant(nil, "acme", body), body),
		"empty sig":    VerifyTenant(key, "acme", "", body),
	} {
		if ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAuthorized(t *testing.T) {
	r, _ := http.NewRequest("GET", "/", nil)
	if Authorized(r, []byte("s")) {
		t.Fatal("no header accepted")
	}
	r.Header.Set("Authorization", "Bearer s")
	if !Authorized(r, []byte("s")) || Authorized(r, []byte("t")) || Authorized(r, nil) {
		t.Fatal("bearer check wrong")
	}
}
