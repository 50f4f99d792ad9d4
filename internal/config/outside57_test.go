package config

// Outside round 57 (helper): a config whose secrets (the store's and the log's DSNs, the
// Redis URL, witness, OIDC and OTLP URLs, a route's upstream key) sit beside a mistake
// elsewhere — bad JSON, an unknown field, a wrong type, a bad duration, a value Validate
// refuses — and the same secrets given through the environment: Load's error, which
// every command prints, must not repeat any of them.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const o57 = "S3cretMarker57cfg"

// o57Secrets is a config's secret-bearing fields, each with the marker; rest is appended
// inside the top-level object (a mistake).
func o57Secrets(rest string) string {
	return `{
  "store": "postgres://strongroom:` + o57 + `@db.example/strongroom",
  "kms": {"current": "local-x"},
  "audit": {"log_db": "mysql://strongroom:` + o57 + `@tcp(db.example:3306)/log",
            "witnesses": [{"vkey": "w+1+x", "url": "https://w:` + o57 + `@w.example/"}], "quorum": 1},
  "gateway": {"redis_url": "redis://r:` + o57 + `@redis.example:6379/0",
              "routes": [{"model": "m", "upstreams": ["http://e.example/v1"], "upstream_key": "` + o57 + `"}],
              "oidc": {"issuer": "https://i.example", "audience": "a", "jwks_url": "https://j:` + o57 + `@i.example/jwks"}},
  "alerts": {"webhook": "https://hooks.example/services/` + o57 + `"},
  "telemetry": {"otlp_endpoint": "https://o:` + o57 + `@otlp.example:4318"},
  "console": {"oidc": {"issuer": "https://c:` + o57 + `@i.example", "client_id": "c", "redirect_url": "https://x/cb"}}` + rest + `
}`
}

func TestOutside57LoadErrors(t *testing.T) {
	cases := map[string]string{
		"bad_json":         `, "admin_listen": "127.0.0.1:8081",,`,
		"unknown_field":    `, "gateway_redis_url": "redis://r:` + o57 + `@h/0"`,
		"wrong_type":       `, "admin_listen": 8081`,
		"bad_duration":     `, "custody": {"lease_ttl": "10 minutes"}`,
		"invalid_value":    `, "custody": {"lease_ttl": "1ms"}`,
		"bad_escape":       `, "blobs": "a\qb"`,
		"quorum_too_large": `, "blobs": "b"`,
	}
	for name, rest := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			body := o57Secrets(rest)
			if name == "quorum_too_large" {
				body = strings.Replace(body, `"quorum": 1`, `"quorum": 2`, 1)
			}
			o57LoadFails(t, dir, body)
		})
	}
}

// TestOutside57LoadErrorsEnv: the secrets through the environment, with a mistake in the
// file.
func TestOutside57LoadErrorsEnv(t *testing.T) {
	t.Setenv("STRONGROOM_STORE", "postgres://strongroom:"+o57+"@db.example/strongroom")
	t.Setenv("STRONGROOM_LOG_DB", "mysql://strongroom:"+o57+"@tcp(db.example:3306)/log")
	t.Setenv("STRONGROOM_REDIS_URL", "redis://r:"+o57+"@redis.example:6379/0")
	for name, body := range map[string]string{
		"invalid_value": `{"kms": {"current": "local-x"}, "gateway": {"internal_country": "usa"}}`,
		"no_kek":        `{}`,
		"bad_json":      `{"kms": {"current": "local-x"},}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			o57LoadFails(t, dir, body)
		})
	}
}

// o57LoadFails writes body as dir's config and wants Load to refuse it without repeating a
// secret (its error is printed by every command).
func o57LoadFails(t *testing.T, dir, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir, "")
	if err == nil {
		t.Fatalf("Load accepted the config")
	}
	if strings.Contains(err.Error(), o57) {
		t.Errorf("LEAK: Load's error repeats a secret: %s", strings.ReplaceAll(err.Error(), o57, "<SECRET>"))
	}
}
