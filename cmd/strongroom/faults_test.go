package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/api"
	tmysql "github.com/transparency-dev/tessera/storage/mysql"
)

// A cuttable TCP path to the shared log's database: the replicas reach MariaDB through it,
// and `logdb cut` makes the database unreachable to them (every connection closed, new
// ones refused) without stopping the server other tests use; `logdb restore` brings it back.
type dbPath struct {
	mu     sync.Mutex
	target string
	down   bool
	conns  map[net.Conn]bool
	ln     net.Listener
}

func (p *dbPath) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

func (p *dbPath) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

var (
	dbPathsMu sync.Mutex
	dbPaths   = map[*testscript.TestScript]map[string]*dbPath{}
)

// newDBPath starts a cuttable path to target for the script, under name.
func newDBPath(ts *testscript.TestScript, name, target string) *dbPath {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	ts.Check(err)
	p := &dbPath{target: target, conns: map[net.Conn]bool{}, ln: ln}
	go p.serve()
	ts.Defer(func() { ln.Close(); p.cut(true) })
	if dbPaths[ts] == nil {
		dbPaths[ts] = map[string]*dbPath{}
	}
	dbPaths[ts][name] = p
	return p
}

func cutOrRestore(ts *testscript.TestScript, name, verb string) {
	p := dbPaths[ts][name]
	if p == nil || (verb != "cut" && verb != "restore") {
		ts.Fatalf("%s new first; then %s cut|restore", name, name)
	}
	p.cut(verb == "cut")
}

func init() {
	// logdb new: a fresh database on the test MariaDB ($STRONGROOM_TEST_MARIADB, dropped at
	// the end), reached through a cuttable path; sets $STRONGROOM_LOG_DB to it.
	// logdb cut | restore: make the database unreachable to the replicas, and back.
	// logdb forge VKEYFILE: append an entry (a lease grant to "attacker") to the log named
	// by the verifier key through tessera's own MySQL driver, as someone with write access
	// to the database and no key would; sets $FORGED to its index.
	// logdb copy VKEYFILE N: append a byte copy of entry N the same way; sets $COPY to its
	// index.
	// logdb poison VKEYFILE: append a forged entry the same way, then overwrite its bytes in
	// its entry bundle (the tree keeps the leaf of bytes nobody holds any more); sets
	// $POISONED to its index.
	// logdb tls DATADIR [off]: the database of logdb new (directly, no cuttable path) as the
	// test MariaDB's user that must bring a client certificate from the test CA
	// ($STRONGROOM_TEST_MARIADB_TLS, REQUIRE X509), in $STRONGROOM_LOG_DB; DATADIR's
	// audit.log_db_tls names that CA and certificate ("off": removes it). Sets
	// $LOGDB_PASSWORD to the user's password.
	scriptCmds["logdb"] = func(ts *testscript.TestScript, neg bool, args []string) {
		dbPathsMu.Lock()
		defer dbPathsMu.Unlock()
		switch args[0] {
		case "forge":
			entry := fmt.Sprintf(`{"v":1,"ts":%q,"kind":"lease.grant","actor":{"principal":"attacker"},"subject":{"model":"sec:1"},"decision":"allow","reason":"","fields":{}}`,
				time.Now().UTC().Format(time.RFC3339Nano))
			ts.Setenv("FORGED", strconv.FormatUint(appendDirect(ts, args[1], func(context.Context, *tmysql.Storage) []byte { return []byte(entry) }), 10))
			return
		case "poison":
			idx := appendDirect(ts, args[1], func(context.Context, *tmysql.Storage) []byte {
				return []byte(`{"v":1,"ts":"2026-01-01T00:00:00Z","kind":"lease.grant","actor":{"principal":"attacker"},"subject":{},"decision":"allow","reason":"","fields":{}}`)
			})
			db, err := sql.Open("mysql", ts.Getenv("STRONGROOM_TEST_LOGDB_DIRECT"))
			ts.Check(err)
			defer db.Close()
			var data []byte
			ts.Check(db.QueryRow("SELECT `data` FROM `TiledLeaves` WHERE `tile_index` = ?", idx/256).Scan(&data))
			var b api.EntryBundle
			ts.Check(b.UnmarshalText(data))
			b.Entries[idx%256] = bytes.Replace(b.Entries[idx%256], []byte("attacker"), []byte("decoy---"), 1)
			var out []byte
			for _, e := range b.Entries {
				out = binary.BigEndian.AppendUint16(out, uint16(len(e)))
				out = append(out, e...)
			}
			_, err = db.Exec("UPDATE `TiledLeaves` SET `data` = ? WHERE `tile_index` = ?", out, idx/256)
			ts.Check(err)
			ts.Setenv("POISONED", strconv.FormatUint(idx, 10))
			return
		case "copy":
			n, err := strconv.ParseUint(args[2], 10, 64)
			ts.Check(err)
			ts.Setenv("COPY", strconv.FormatUint(appendDirect(ts, args[1], func(ctx context.Context, st *tmysql.Storage) []byte {
				size, err := st.IntegratedSize(ctx)
				ts.Check(err)
				raw, err := audit.ReadEntry(ctx, st, n, size)
				ts.Check(err)
				return raw
			}), 10))
			return
		}
		if args[0] == "tls" {
			direct, err := mysql.ParseDSN(ts.Getenv("STRONGROOM_TEST_LOGDB_DIRECT"))
			ts.Check(err)
			c, err := audit.ParseLogDSN(ts.Getenv("STRONGROOM_TEST_MARIADB_TLS"))
			ts.Check(err)
			c.DBName = direct.DBName
			ts.Setenv("STRONGROOM_LOG_DB", "mysql://"+c.FormatDSN())
			ts.Setenv("LOGDB_PASSWORD", c.Passwd)
			path := filepath.Join(ts.MkAbs(args[1]), "config.json")
			cfg, err := config.ReadRaw(path)
			ts.Check(err)
			dir := ts.Getenv("STRONGROOM_TEST_TLS_DIR")
			cfg.Audit.LogDBTLS = &config.ClientTLS{CAFile: filepath.Join(dir, "ca.pem"),
				CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client.key")}
			if len(args) > 2 && args[2] == "off" {
				cfg.Audit.LogDBTLS = nil
			}
			ts.Check(config.Write(path, cfg))
			return
		}
		if args[0] != "new" {
			cutOrRestore(ts, "logdb", args[0])
			return
		}
		c, err := audit.ParseLogDSN(ts.Getenv("STRONGROOM_TEST_MARIADB"))
		ts.Check(err)
		admin, err := sql.Open("mysql", c.FormatDSN())
		ts.Check(err)
		name := "srscript_" + randHex()
		_, err = admin.Exec("CREATE DATABASE " + name)
		ts.Check(err)
		ts.Defer(func() {
			admin.Exec("DROP DATABASE " + name)
			admin.Close()
		})
		p := newDBPath(ts, "logdb", c.Addr)
		c.DBName = name
		ts.Setenv("STRONGROOM_TEST_LOGDB_DIRECT", c.FormatDSN())
		c.Addr = p.ln.Addr().String()
		ts.Setenv("STRONGROOM_LOG_DB", "mysql://"+c.FormatDSN())
	}
	// storedb new: a fresh database on the test PostgreSQL ($STRONGROOM_TEST_POSTGRES,
	// dropped at the end), reached through a cuttable path; sets $STRONGROOM_STORE to it.
	// storedb cut | restore: the store goes away, and comes back.
	scriptCmds["storedb"] = func(ts *testscript.TestScript, neg bool, args []string) {
		dbPathsMu.Lock()
		defer dbPathsMu.Unlock()
		if args[0] != "new" {
			cutOrRestore(ts, "storedb", args[0])
			return
		}
		u, err := url.Parse(ts.Getenv("STRONGROOM_TEST_POSTGRES"))
		ts.Check(err)
		admin, err := pgx.Connect(context.Background(), u.String())
		ts.Check(err)
		name := "srscript_" + randHex()
		_, err = admin.Exec(context.Background(), "CREATE DATABASE "+name)
		ts.Check(err)
		ts.Defer(func() {
			admin.Exec(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)")
			admin.Close(context.Background())
		})
		p := newDBPath(ts, "storedb", u.Host)
		u.Host, u.Path = p.ln.Addr().String(), "/"+name
		ts.Setenv("STRONGROOM_STORE", u.String())
	}
	// waitstatus URL STATUS: wait until GET URL answers STATUS.
	scriptCmds["waitstatus"] = func(ts *testscript.TestScript, neg bool, args []string) {
		for deadline := time.Now().Add(readyLimit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if resp, err := http.Get(args[0]); err == nil {
				resp.Body.Close()
				if resp.Status[:3] == args[1] {
					return
				}
			}
		}
		ts.Fatalf("%s never answered %s", args[0], args[1])
	}
}

func randHex() string {
	var r [6]byte
	rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// appendDirect appends the entry that entry returns to the script's log database through
// tessera's own driver, as someone with write access to the database and no key would
// (logdb forge, logdb copy), and returns its index.
func appendDirect(ts *testscript.TestScript, vkeyFile string, entry func(context.Context, *tmysql.Storage) []byte) uint64 {
	vkey, err := os.ReadFile(ts.MkAbs(vkeyFile))
	ts.Check(err)
	origin, _, _ := strings.Cut(string(vkey), "+")
	db, err := sql.Open("mysql", ts.Getenv("STRONGROOM_TEST_LOGDB_DIRECT"))
	ts.Check(err)
	defer db.Close()
	ctx, stop := context.WithCancel(context.Background())
	defer stop() // tessera's loops end with it, before the database closes
	st, err := tmysql.New(ctx, db)
	ts.Check(err)
	app, shutdown, _, err := tessera.NewAppender(ctx, st, tessera.NewAppendOptions().
		WithCheckpointSigner(noKey(origin)).WithCheckpointInterval(time.Second).WithBatching(1, 10*time.Millisecond))
	ts.Check(err)
	idx, err := app.Add(ctx, tessera.NewEntry(entry(ctx, st)))()
	ts.Check(err)
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	shutdown(sctx) // its checkpoint is never signed: it has no key
	cancel()
	return idx.Index
}

// noKey has a log's name and no key: it cannot sign a checkpoint.
type noKey string

func (s noKey) Name() string                { return string(s) }
func (s noKey) KeyHash() uint32             { return 1 }
func (s noKey) Sign([]byte) ([]byte, error) { return nil, errors.New("no key") }
