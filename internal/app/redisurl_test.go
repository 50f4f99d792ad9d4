package app

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/testenv"
)

// TestRedisPlaintextRemoteWarned: a redis:// URL to a host that is not this one sends the
// Redis password and the limiter's traffic in the clear; serve says so once, without the
// password. Loopback, a unix socket and rediss:// are not warned about.
func TestRedisPlaintextRemoteWarned(t *testing.T) {
	for _, tc := range []struct {
		url  string
		warn bool
	}{
		{"redis://:hunter2pw@10.1.2.3:6379/0", true},
		{"redis://:hunter2pw@redis.internal.example:6379/0", true},
		{"redis://:hunter2pw@[2001:db8::1]:6379/0", true},
		{"redis://:hunter2pw@[::ffff:10.0.0.1]:6379/0", true},
		{"redis://:hunter2pw@127.0.0.1:6379/0", false},
		{"redis://:hunter2pw@127.8.9.10:6379/0", false},
		{"redis://:hunter2pw@[::1]:6379/0", false},
		{"redis://:hunter2pw@localhost:6379/0", false},
		{"rediss://:hunter2pw@10.1.2.3:6379/0", false},
	} {
		var log testenv.LogBuffer
		a := &App{Config: config.Config{Gateway: config.Gateway{RedisURL: tc.url}}, Log: slog.New(slog.NewTextHandler(&log, nil))}
		c, err := a.Redis()
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		c.Close()
		out := log.String()
		if got := strings.Contains(out, "no TLS"); got != tc.warn {
			t.Errorf("%s: warned %v, want %v (log %q)", tc.url, got, tc.warn, out)
		}
		if strings.Contains(out, "hunter2pw") {
			t.Errorf("%s: the warning holds the password: %q", tc.url, out)
		}
		if !tc.warn {
			continue
		}
		opt, _ := redis.ParseURL(tc.url)
		if opt.TLSConfig != nil || !plaintextRemote(opt.Network, opt.Addr) {
			t.Errorf("%s: plaintextRemote false", tc.url)
		}
	}
}
