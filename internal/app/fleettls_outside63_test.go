package app

// Outside round 63: serve's warning about a PostgreSQL store reached without TLS that
// checks the server (claim B).

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/testenv"
)

// TestOutside63StoreWarningSpellings: DSN spellings, as pgx reads them (environment and
// service file included). want: the store reaches a host that is not loopback by a path
// without a checked certificate.
func TestOutside63StoreWarningSpellings(t *testing.T) {
	ca := testenv.NewCA(t, "store CA").CAFile
	svc := filepath.Join(t.TempDir(), "pg_service.conf")
	if err := os.WriteFile(svc, []byte("[remote]\nhost=10.0.0.5\nsslmode=disable\n[checked]\nhost=10.0.0.5\nsslmode=verify-full\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clean := map[string]string{"PGHOST": "", "PGHOSTADDR": "", "PGSSLMODE": "", "PGSSLROOTCERT": "", "PGSERVICE": "", "PGSERVICEFILE": "", "PGSSLNEGOTIATION": "", "PGPORT": ""}
	type tc struct {
		dsn  string
		env  map[string]string
		want bool
	}
	for name, c := range map[string]tc{
		"postgresql scheme":                     {"postgresql://u:pw@10.0.0.5/db", nil, true},
		"mixed-case scheme":                     {"PostgreSQL://u:pw@10.0.0.5/db?sslmode=disable", nil, true},
		"keyword default prefer":                {"host=10.0.0.5 dbname=db", nil, true},
		"keyword spaced":                        {"host = 10.0.0.5 dbname = db sslmode = disable", nil, true},
		"keyword quoted host":                   {"dbname=db host='10.0.0.5'", nil, true},
		"keyword host list":                     {"host=127.0.0.1,10.0.0.5 dbname=db sslmode=disable", nil, true},
		"keyword host list, socket":             {"host=127.0.0.1,/tmp dbname=db sslmode=disable", nil, false},
		"keyword empty host element":            {"host=,10.0.0.5 dbname=db sslmode=disable", nil, true},
		"url host list with ports":              {"postgres://u@127.0.0.1:5432,10.0.0.5:5433/db?sslmode=disable", nil, true},
		"url host list all loopback":            {"postgres://u@127.0.0.1:5432,[::1]:5433/db?sslmode=disable", nil, false},
		"verify-full keyword":                   {"host=10.0.0.5 sslmode=verify-full", nil, false},
		"require with root":                     {"host=10.0.0.5 sslmode=require sslrootcert=" + ca, nil, false},
		"prefer with root":                      {"host=10.0.0.5 sslmode=prefer sslrootcert=" + ca, nil, true},
		"allow with root":                       {"host=10.0.0.5 sslmode=allow sslrootcert=" + ca, nil, true},
		"verify-ca with root":                   {"host=10.0.0.5 sslmode=verify-ca sslrootcert=" + ca, nil, false},
		"sslrootcert=system (pgx: verify-full)": {"host=10.0.0.5 sslmode=disable sslrootcert=system", nil, false},
		"direct negotiation":                    {"host=10.0.0.5 sslnegotiation=direct", nil, true},
		"direct negotiation with root":          {"host=10.0.0.5 sslnegotiation=direct sslrootcert=" + ca, nil, false},
		"ssl=true alias":                        {"postgres://u@10.0.0.5/db?ssl=true", nil, true},
		"PGHOST":                                {"dbname=db", map[string]string{"PGHOST": "10.0.0.5"}, true},
		"PGHOST url":                            {"postgres:///db", map[string]string{"PGHOST": "db.example"}, true},
		"PGHOST PGSSLMODE verify-full":          {"dbname=db", map[string]string{"PGHOST": "10.0.0.5", "PGSSLMODE": "verify-full"}, false},
		"PGSSLMODE disable":                     {"postgres://u@10.0.0.5/db", map[string]string{"PGSSLMODE": "disable"}, true},
		"PGSSLMODE require root":                {"postgres://u@10.0.0.5/db", map[string]string{"PGSSLMODE": "require", "PGSSLROOTCERT": ca}, false},
		"PGSSLMODE require":                     {"postgres://u@10.0.0.5/db", map[string]string{"PGSSLMODE": "require"}, true},
		"DSN sslmode over PGSSLMODE":            {"postgres://u@10.0.0.5/db?sslmode=verify-full", map[string]string{"PGSSLMODE": "disable"}, false},
		"PGHOST loopback, DSN remote":           {"postgres://u@10.0.0.5/db?sslmode=disable", map[string]string{"PGHOST": "127.0.0.1"}, true},
		"service file":                          {"service=remote dbname=db", map[string]string{"PGSERVICEFILE": svc}, true},
		"PGSERVICE":                             {"dbname=db", map[string]string{"PGSERVICEFILE": svc, "PGSERVICE": "remote"}, true},
		"service file checked":                  {"service=checked dbname=db", map[string]string{"PGSERVICEFILE": svc}, false},
		"ipv6 loopback":                         {"postgres://u@[::1]/db?sslmode=disable", nil, false},
		"ipv4-mapped loopback":                  {"postgres://u@[::ffff:127.0.0.1]/db?sslmode=disable", nil, false},
		"ipv4-mapped remote":                    {"postgres://u@[::ffff:10.0.0.5]/db?sslmode=disable", nil, true},
		"ipv6 remote":                           {"postgres://u@[2001:db8::1]:5432/db?sslmode=disable", nil, true},
		"ipv6 link-local zone":                  {"host=fe80::1%eth0 dbname=db sslmode=disable", nil, true},
		"localhost lookalike":                   {"postgres://u@localhost.attacker.example/db?sslmode=disable", nil, true},
		"loopback lookalike":                    {"postgres://u@127.0.0.1.nip.io/db?sslmode=disable", nil, true},
		"short loopback":                        {"host=127.1 dbname=db sslmode=disable", nil, true},
		"hex loopback":                          {"host=0x7f000001 dbname=db sslmode=disable", nil, true},
		"127.255.255.254":                       {"host=127.255.255.254 dbname=db sslmode=disable", nil, false},
		"socket plus hostaddr":                  {"host=/var/run/postgresql hostaddr=10.0.0.5 dbname=db sslmode=disable", nil, false}, // pgx has no hostaddr: the socket
		"localhost":                             {"host=localhost dbname=db sslmode=disable", nil, false},
		"unix socket url":                       {"postgres://u@%2Fvar%2Frun%2Fpostgresql/db?sslmode=disable", nil, false},
		"unix socket query":                     {"postgres:///db?host=/var/run/postgresql&sslmode=disable", nil, false},
		"url query host remote":                 {"postgres:///db?host=10.0.0.5&sslmode=disable", nil, true},
	} {
		t.Run(name, func(t *testing.T) {
			for k, v := range clean {
				t.Setenv(k, v)
				if v == "" {
					os.Unsetenv(k)
				}
			}
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			if got := storeUnverifiedRemote(c.dsn); got != c.want {
				t.Errorf("%s (env %v): warned %v, want %v", c.dsn, c.env, got, c.want)
			}
		})
	}
}

// TestOutside63StoreWarningHidesPassword: serve's warning for a store on another host
// without a checked certificate, against the real PostgreSQL (the first host is loopback,
// which answers; the second is remote and plaintext). The warning must be there, and the
// password in none of the spellings pgx accepts.
func TestOutside63StoreWarningHidesPassword(t *testing.T) {
	pgURL, dbName := testenv.PostgresDB(t, "o63_")
	pu, _ := url.Parse(pgURL)
	host, port := pu.Hostname(), pu.Port()
	const secret = "Mk63s3cr" // every password below holds it
	// The hosts: loopback (which answers) and a remote one (plaintext); the port in the
	// query (pgx reads it there), as an operator may write it.
	hosts, q := host+",10.255.255.1", "port="+port+"&sslmode=disable"
	dsns := map[string]string{
		"userinfo":                    "postgres://strongroom:" + secret + "x@" + hosts + "/" + dbName + "?" + q,
		"query password with @":       "postgres://strongroom@" + hosts + "/" + dbName + "?" + q + "&password=" + secret + "@x",
		"query password, no userinfo": "postgres://" + hosts + "/" + dbName + "?" + q + "&user=strongroom&password=p@" + secret,
		"query password with :@":      "postgres://strongroom@" + hosts + "/" + dbName + "?" + q + "&password=" + secret + ":y@z",
		"port in netloc, password @":  "postgres://strongroom@" + host + ":" + port + ",10.255.255.1:" + port + "/" + dbName + "?sslmode=disable&password=" + secret + "@x",
		"keyword quoted":              "host=" + hosts + " port=" + port + " user=strongroom dbname=" + dbName + " sslmode=disable password='" + secret + " a=b'",
	}
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "data")
	first := true
	for name, dsn := range dsns {
		t.Run(name, func(t *testing.T) {
			if first {
				first = false
				if _, err := Init(ctx, dir, InitOptions{Store: dsn}); err != nil {
					t.Fatal(err)
				}
			} else {
				cfgPath := filepath.Join(dir, config.FileName)
				c, err := config.ReadRaw(cfgPath)
				if err != nil {
					t.Fatal(err)
				}
				c.Store = dsn
				if err := config.Write(cfgPath, c); err != nil {
					t.Fatal(err)
				}
			}
			var buf o63Buf
			a, err := Open(ctx, dir, "", slog.New(slog.NewTextHandler(&buf, nil)))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			a.Close()
			out := buf.String()
			if !strings.Contains(out, "store: the PostgreSQL DSN reaches another host") {
				t.Errorf("no warning for a store with a plaintext remote host:\n%s", out)
			}
			if strings.Contains(out, secret) {
				for _, l := range strings.Split(out, "\n") {
					if strings.Contains(l, secret) {
						t.Errorf("the password is in the log: %s", l)
					}
				}
			}
		})
	}
}
