package main

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	_ "github.com/go-sql-driver/mysql"
	"github.com/rogpeppe/go-internal/testscript"
	"github.com/strongroom/strongroom/internal/audit"
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
	dbPaths   = map[*testscript.TestScript]*dbPath{}
)

func init() {
	// logdb new: a fresh database on the test MariaDB ($STRONGROOM_TEST_MARIADB, dropped at
	// the end), reached through a cuttable path; sets $STRONGROOM_LOG_DB to it.
	// logdb cut | restore: make the database unreachable to the replicas, and back.
	scriptCmds["logdb"] = func(ts *testscript.TestScript, neg bool, args []string) {
		dbPathsMu.Lock()
		defer dbPathsMu.Unlock()
		switch args[0] {
		case "new":
			c, err := audit.ParseLogDSN(ts.Getenv("STRONGROOM_TEST_MARIADB"))
			ts.Check(err)
			admin, err := sql.Open("mysql", c.FormatDSN())
			ts.Check(err)
			var r [6]byte
			rand.Read(r[:])
			name := "srscript_" + hex.EncodeToString(r[:])
			_, err = admin.Exec("CREATE DATABASE " + name)
			ts.Check(err)
			ts.Defer(func() {
				admin.Exec("DROP DATABASE " + name)
				admin.Close()
			})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			ts.Check(err)
			p := &dbPath{target: c.Addr, conns: map[net.Conn]bool{}, ln: ln}
			go p.serve()
			ts.Defer(func() { ln.Close(); p.cut(true) })
			dbPaths[ts] = p
			c.DBName, c.Addr = name, ln.Addr().String()
			ts.Setenv("STRONGROOM_LOG_DB", "mysql://"+c.FormatDSN())
		case "cut", "restore":
			dbPaths[ts].cut(args[0] == "cut")
		default:
			ts.Fatalf("logdb new|cut|restore")
		}
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
