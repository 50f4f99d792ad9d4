package config

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestExampleCoversEveryField: docs/config.example.json is a valid config (read strictly,
// as `serve` reads config.json) and shows every field Config has (but the legacy route
// attributes), so that the example and the reference in DESIGN.md cannot fall behind.
func TestExampleCoversEveryField(t *testing.T) {
	const path = "../../docs/config.example.json"
	c, err := ReadRaw(path)
	if err != nil {
		t.Fatal(err)
	}
	c.resolve("/data")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for _, p := range fieldPaths(reflect.TypeOf(Config{}), "") {
		if !hasPath(doc, strings.Split(p, ".")) {
			t.Errorf("docs/config.example.json lacks %s", p)
		}
	}
}

// fieldPaths lists the JSON paths of t's fields, "a.b" for nested objects; a slice of
// structs contributes its element's fields under "a.[]".
func fieldPaths(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous {
			if f.Type == reflect.TypeOf(LegacyAttrs{}) {
				continue // read for migration only; not to be written any more
			}
			out = append(out, fieldPaths(f.Type, prefix)...)
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		p := prefix + name
		out = append(out, p)
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct && ft != reflect.TypeOf(Duration{}):
			out = append(out, fieldPaths(ft, p+".")...)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			out = append(out, fieldPaths(ft.Elem(), p+".[].")...)
		}
	}
	return out
}

func hasPath(doc any, p []string) bool {
	if len(p) == 0 {
		return true
	}
	switch v := doc.(type) {
	case map[string]any:
		next, ok := v[p[0]]
		return ok && hasPath(next, p[1:])
	case []any:
		if p[0] != "[]" || len(v) == 0 {
			return false
		}
		for _, e := range v {
			if hasPath(e, p[1:]) {
				return true
			}
		}
	}
	return false
}

// TestCheckpointStallBounds: audit.checkpoint_stall is left out (the default) or at least a
// second; a shorter one would alert on every publication interval.
func TestCheckpointStallBounds(t *testing.T) {
	c, err := ReadRaw("../../docs/config.example.json")
	if err != nil {
		t.Fatal(err)
	}
	c.resolve("/data")
	for d, ok := range map[string]bool{"0s": true, "1s": true, "45s": true, "999ms": false, "-5s": false} {
		if err := json.Unmarshal([]byte(`"`+d+`"`), &c.Audit.CheckpointStall); err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); (err == nil) != ok {
			t.Errorf("checkpoint_stall %s: Validate %v, want ok=%v", d, err, ok)
		}
	}
}

// TestClientTLSSettings: gateway.redis_tls needs a rediss:// redis_url, audit.log_db_tls a
// log_db, and either needs its client certificate whole (cert and key) or not at all.
func TestClientTLSSettings(t *testing.T) {
	base, err := ReadRaw("../../docs/config.example.json")
	if err != nil {
		t.Fatal(err)
	}
	base.resolve("/data")
	if err := base.Validate(); err != nil {
		t.Fatalf("the example: %v", err)
	}
	for name, tc := range map[string]struct {
		set func(*Config)
		ok  bool
	}{
		"redis CA only":               {func(c *Config) { c.Gateway.RedisTLS = &ClientTLS{CAFile: "ca.pem"} }, true},
		"redis upper-case scheme":     {func(c *Config) { c.Gateway.RedisURL = "REDISS://h:6380/0" }, true},
		"redis:// with redis_tls":     {func(c *Config) { c.Gateway.RedisURL = "redis://h:6379/0" }, false},
		"redis_tls without redis_url": {func(c *Config) { c.Gateway.RedisURL = "" }, false},
		"redis cert without key":      {func(c *Config) { c.Gateway.RedisTLS = &ClientTLS{CAFile: "ca.pem", CertFile: "c.pem"} }, false},
		"redis_tls empty":             {func(c *Config) { c.Gateway.RedisTLS = &ClientTLS{} }, false},
		"log_db key without cert":     {func(c *Config) { c.Audit.LogDBTLS = &ClientTLS{KeyFile: "k.pem"} }, false},
		"log_db_tls without log_db":   {func(c *Config) { c.Audit.LogDB = "" }, false},
		"no TLS settings":             {func(c *Config) { c.Gateway.RedisTLS, c.Audit.LogDBTLS = nil, nil }, true},
	} {
		c := base
		rt, lt := *base.Gateway.RedisTLS, *base.Audit.LogDBTLS
		c.Gateway.RedisTLS, c.Audit.LogDBTLS = &rt, &lt
		tc.set(&c)
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate %v, want ok=%v", name, err, tc.ok)
		}
	}
}

// TestRelativeFilesAreTheDataDirectorys: every file a setting names is resolved against the
// data directory when relative — the TLS links' and the gateway's certificate files among
// them (outside round 62: they were read from the working directory).
func TestRelativeFilesAreTheDataDirectorys(t *testing.T) {
	c, err := ReadRaw("../../docs/config.example.json")
	if err != nil {
		t.Fatal(err)
	}
	rel := &ClientTLS{CAFile: "tls/ca.pem", CertFile: "tls/c.pem", KeyFile: "tls/c.key"}
	rt, lt := *rel, *rel
	c.Gateway.RedisTLS, c.Audit.LogDBTLS = &rt, &lt
	c.Gateway.TLS = &TLS{CertFile: "tls/gw.pem", KeyFile: "tls/gw.key", ClientCAFile: "tls/clients.pem"}
	c.Gateway.GeoMMDB, c.Gateway.ScreeningList = "geo.mmdb", "lists/sdn.csv"
	c.resolve("/data")
	for name, p := range map[string]string{
		"redis_tls.ca_file": c.Gateway.RedisTLS.CAFile, "redis_tls.cert_file": c.Gateway.RedisTLS.CertFile,
		"redis_tls.key_file": c.Gateway.RedisTLS.KeyFile, "log_db_tls.ca_file": c.Audit.LogDBTLS.CAFile,
		"log_db_tls.cert_file": c.Audit.LogDBTLS.CertFile, "log_db_tls.key_file": c.Audit.LogDBTLS.KeyFile,
		"tls.cert_file": c.Gateway.TLS.CertFile, "tls.key_file": c.Gateway.TLS.KeyFile,
		"tls.client_ca_file": c.Gateway.TLS.ClientCAFile, "geo_mmdb": c.Gateway.GeoMMDB,
		"screening_list": c.Gateway.ScreeningList,
	} {
		if !strings.HasPrefix(p, "/data/") {
			t.Errorf("%s resolved to %q, not under the data directory", name, p)
		}
	}
}
