package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/store"
	"github.com/strongroom/strongroom/internal/testenv"
	"golang.org/x/mod/sumdb/note"
)

// fleetTLS is the fleet CA and the replica's client certificate that scripts/test made
// (STRONGROOM_TEST_TLS_DIR), as a gateway.redis_tls / audit.log_db_tls setting.
func fleetTLS(t *testing.T) *config.ClientTLS {
	dir := testenv.Get(t, "STRONGROOM_TEST_TLS_DIR")
	return &config.ClientTLS{CAFile: filepath.Join(dir, "ca.pem"),
		CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
}

// tlsLogDSN is a fresh database on the test MariaDB, as the user that must come with TLS
// and a client certificate from the fleet CA (REQUIRE X509): its DSN and password.
func tlsLogDSN(t *testing.T) (dsn, password string) {
	_, _, _, _, name := a13DB(t)
	c, err := audit.ParseLogDSN(testenv.Get(t, "STRONGROOM_TEST_MARIADB_TLS"))
	if err != nil {
		t.Fatal(err)
	}
	c.DBName = name
	return "mysql://" + c.FormatDSN(), c.Passwd
}

// TestFleetLinksOverTLS: a replica whose log database and Redis both require TLS with a
// client certificate from the fleet's CA — scripts/test's MariaDB user strongroom_x509
// (REQUIRE X509) and Redis's TLS port (tls-auth-clients yes) — records its answers in the
// log on MariaDB and counts them in the shared limiter, over those links.
func TestFleetLinksOverTLS(t *testing.T) {
	files := fleetTLS(t)
	dsn, password := tlsLogDSN(t)
	var r [6]byte
	rand.Read(r[:])
	prefix := "srtls" + hex.EncodeToString(r[:]) + ":"
	e := a13OpenWith(t, dsn, password, func(c *config.Config) {
		c.Audit.LogDBTLS = files
		c.Gateway.RedisURL = testenv.Get(t, "STRONGROOM_TEST_REDIS_TLS")
		c.Gateway.RedisTLS = files
		c.Gateway.RedisPrefix = prefix
		c.Gateway.KeyLimits = config.Limits{RPM: 3}
	})
	var acked []a13Answer
	for i := range 3 {
		a := e.ask(i == 1, 30*time.Second)
		if a.err != nil || a.status != 200 || !a.complete {
			t.Fatalf("request %d over the TLS links: status %d, complete %v, err %v", i, a.status, a.complete, a.err)
		}
		acked = append(acked, a)
	}
	if a := e.ask(false, 30*time.Second); a.status != 429 {
		t.Fatalf("the 4th request in a minute with rpm 3: status %d, want 429 (the shared limiter over TLS)", a.status)
	}
	e.recorded(t, acked)

	rdb, err := e.a.Redis()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := rdb.Keys(context.Background(), prefix+"*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("the limiter's keys under %s in the TLS Redis: %v, %v", prefix, keys, err)
	}
	if strings.Contains(e.logs.String(), password) || strings.Contains(e.seen.String(), password) {
		t.Fatal("the log database's password appears in the replica's logs or answers")
	}
	// The client certificate's expiry, for each link, on /metrics.
	pair, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	m := e.metrics()
	for _, link := range []string{"audit.log_db_tls", "gateway.redis_tls"} {
		want := fmt.Sprintf(`strongroom_tls_client_cert_expiry_timestamp_seconds{link=%q} %s`, link,
			strconv.FormatFloat(float64(pair.Leaf.NotAfter.Unix()), 'g', -1, 64))
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(e.logs.String(), "no TLS") {
		t.Fatalf("a plaintext warning for TLS links: %s", e.logs.String())
	}
}

// TestFleetLinksRefuseWithoutTLS: what a link to a TLS engine is refused with — no client
// certificate, a CA that did not sign the server's certificate (the system's roots), a
// setting that would not check the server at all — and that the refusal never quotes the
// password.
func TestFleetLinksRefuseWithoutTLS(t *testing.T) {
	files := fleetTLS(t)
	redisURL := testenv.Get(t, "STRONGROOM_TEST_REDIS_TLS")
	caOnly := &config.ClientTLS{CAFile: files.CAFile}
	other := testenv.NewCA(t, "not the fleet's CA")
	otherCA := &config.ClientTLS{CAFile: other.CAFile, CertFile: files.CertFile, KeyFile: files.KeyFile}
	ctx := context.Background()

	t.Run("redis", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			url  string
			tls  *config.ClientTLS
			ok   bool
		}{
			{"the fleet's CA and a client certificate", redisURL, files, true},
			{"no redis_tls: the system's roots", redisURL, nil, false},
			{"no client certificate", redisURL, caOnly, false},
			{"another CA", redisURL, otherCA, false},
			{"skip_verify", redisURL + "?skip_verify=true", nil, false},
		} {
			var log testenv.LogBuffer
			a := &App{Config: config.Config{Gateway: config.Gateway{RedisURL: tc.url, RedisTLS: tc.tls}},
				Log: slog.New(slog.NewTextHandler(&log, nil))}
			c, err := a.Redis()
			if err == nil {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err = c.Ping(pctx).Err()
				cancel()
				c.Close()
			}
			if (err == nil) != tc.ok {
				t.Errorf("%s: err %v, want success %v", tc.name, err, tc.ok)
			}
		}
	})

	t.Run("log database", func(t *testing.T) {
		dsn, password := tlsLogDSN(t)
		s, _, err := note.GenerateKey(rand.Reader, "strongroom.test/tls")
		if err != nil {
			t.Fatal(err)
		}
		signer, err := note.NewSigner(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			dsn  string
			tls  *config.ClientTLS
			ok   bool
		}{
			{"the fleet's CA and a client certificate", dsn, files, true},
			{"no TLS (REQUIRE X509 refuses)", dsn, nil, false},
			{"tls=true: the system's roots", dsn + "&tls=true", nil, false},
			{"no client certificate", dsn, caOnly, false},
			{"another CA", dsn, otherCA, false},
			{"tls=skip-verify", dsn + "&tls=skip-verify", nil, false},
			{"tls=preferred", dsn + "&tls=preferred", nil, false},
			{"allowFallbackToPlaintext", dsn + "&tls=true&allowFallbackToPlaintext=true", nil, false},
		} {
			tc2, err := ClientTLS("audit.log_db_tls", tc.tls)
			if err != nil {
				t.Fatal(err)
			}
			octx, cancel := context.WithTimeout(ctx, 30*time.Second)
			l, err := audit.Open(octx, audit.Config{DB: tc.dsn, DBTLS: tc2, Signer: signer, EntryKey: audit.EntryKey(make([]byte, 32)), ShutdownTimeout: 5 * time.Second})
			cancel()
			if err == nil {
				l.Close(ctx)
			} else if strings.Contains(err.Error(), password) {
				t.Errorf("%s: the error quotes the password: %v", tc.name, err)
			}
			if (err == nil) != tc.ok {
				t.Errorf("%s: err %v, want success %v", tc.name, err, tc.ok)
			}
		}
	})
}

// TestStoreUnverifiedRemote: which PostgreSQL store addresses serve gets warned about — a
// host that is not this one reached without TLS that checks the server — as pgx reads them.
func TestStoreUnverifiedRemote(t *testing.T) {
	ca := testenv.NewCA(t, "store CA").CAFile
	for dsn, want := range map[string]bool{
		"postgres://u:pw@10.0.0.5/db?sslmode=disable":                          true,
		"postgres://u:pw@10.0.0.5/db?sslmode=prefer":                           true, // falls back to plaintext
		"postgres://u:pw@10.0.0.5/db":                                          true, // pgx's default: prefer
		"postgres://u:pw@db.internal/db?sslmode=require":                       true, // TLS, the server unchecked
		"postgres://u:pw@10.0.0.5/db?sslmode=verify-full&sslrootcert=" + ca:    false,
		"postgres://u:pw@10.0.0.5/db?sslmode=verify-ca&sslrootcert=" + ca:      false,
		"postgres://u:pw@10.0.0.5/db?sslmode=require&sslrootcert=" + ca:        false, // verify-ca, as libpq
		"POSTGRES://u:pw@10.0.0.5/db?sslmode=disable":                          true,
		"postgres://u:pw@127.0.0.1,10.0.0.5/db?sslmode=disable":                true, // a second host
		"postgres://u:pw@127.0.0.1:5432/db?sslmode=disable":                    false,
		"postgres://u:pw@localhost/db?sslmode=disable":                         false,
		"postgres://u:pw@[::1]:5432/db?sslmode=disable":                        false,
		"host=10.0.0.5 user=u password=pw dbname=db sslmode=disable":           true,
		"host=/var/run/postgresql user=u dbname=db sslmode=disable":            false,
		"postgres://u:pw@10.0.0.5/db?sslmode=verify-full&sslrootcert=/no/such": false, // unreadable: Open says so
		"strongroom.db": false,
	} {
		if got := storeUnverifiedRemote(dsn); got != want {
			t.Errorf("%s: %v, want %v", dsn, got, want)
		}
	}
}

// TestStoreOverTLS: the store on the real PostgreSQL over TLS with the fleet CA
// (sslmode=verify-full) as a role that must bring the CA's client certificate (cert auth),
// through store.Open as serve opens it; without the client certificate, or with another
// CA, it is refused.
func TestStoreOverTLS(t *testing.T) {
	files := fleetTLS(t)
	base := testenv.Get(t, "STRONGROOM_TEST_POSTGRES_TLS")
	other := testenv.NewCA(t, "not the fleet's CA").CAFile
	ctx := context.Background()
	dsn := func(ca string, cert bool) string {
		q := url.Values{"sslmode": {"verify-full"}, "sslrootcert": {ca}, "connect_timeout": {"10"}}
		if cert {
			q.Set("sslcert", files.CertFile)
			q.Set("sslkey", files.KeyFile)
		}
		return base + "?" + q.Encode()
	}
	good := dsn(files.CAFile, true)
	s, err := store.Open(ctx, good)
	if err != nil {
		t.Fatalf("the store over TLS with the fleet CA and a client certificate: %v", err)
	}
	s.Close()
	if storeUnverifiedRemote(good) {
		t.Error("a verify-full DSN is taken for an unverified one")
	}
	db, err := sql.Open("pgx", good)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ssl bool
	if err := db.QueryRowContext(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("the session is not over TLS: ssl %v, err %v", ssl, err)
	}
	for name, d := range map[string]string{
		"no client certificate": dsn(files.CAFile, false),
		"another CA":            dsn(other, true),
	} {
		if s, err := store.Open(ctx, d); err == nil {
			s.Close()
			t.Errorf("%s: the store opened", name)
		}
	}
}
