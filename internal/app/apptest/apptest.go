// Package apptest builds a real deployment in a temporary data directory for tests and
// benchmarks of the pieces app wires: SQLite, a local KEK, the tessera audit log, Cedar
// policy, and the custody API over TLS on loopback.
package apptest

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/inventory"
	"github.com/strongroom/strongroom/internal/store"
)

// Env is an opened deployment with its custody API served.
type Env struct {
	App    *app.App
	Svc    *custody.Service
	URL    string // custody API base URL
	Dir    string // data directory
	Server *httptest.Server
}

// New initializes a data directory, lets mod change its config and policy files, opens
// it and serves custody. Everything is closed at the end of the test.
func New(tb testing.TB, mod func(c *config.Config, dataDir string)) *Env {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := tb.TempDir()
	if _, err := app.Init(ctx, dir, app.InitOptions{}); err != nil {
		tb.Fatal(err)
	}
	if mod != nil {
		path := filepath.Join(dir, config.FileName)
		c, err := config.ReadRaw(path)
		if err != nil {
			tb.Fatal(err)
		}
		mod(&c, dir)
		if err := config.Write(path, c); err != nil {
			tb.Fatal(err)
		}
	}
	a, err := app.Open(ctx, dir, "", nil)
	if err != nil {
		tb.Fatal(err)
	}
	svc, err := a.Custody(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	go svc.Run(ctx)
	srv := httptest.NewUnstartedServer(svc.Handler())
	if srv.TLS, err = a.CustodyTLS("127.0.0.1:0"); err != nil {
		tb.Fatal(err)
	}
	srv.StartTLS()
	tb.Cleanup(func() {
		srv.Close()
		cancel()
		a.Close()
	})
	return &Env{App: a, Svc: svc, URL: srv.URL, Dir: dir, Server: srv}
}

// Import seals files (relative path → content) as a model version.
func (e *Env) Import(tb testing.TB, name, version, class string, files map[string][]byte) store.Version {
	tb.Helper()
	src := tb.TempDir()
	for p, b := range files {
		full := filepath.Join(src, filepath.FromSlash(p))
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	v, err := e.App.Inventory.Import(context.Background(), src, inventory.Meta{Name: name, Version: version, Classification: class, Owner: "test"})
	if err != nil {
		tb.Fatal(err)
	}
	os.RemoveAll(src)
	return v
}

// Join creates an owner principal if needed, a join token for env, and joins a runtime.
func (e *Env) Join(tb testing.TB, env string) *custody.Identity {
	tb.Helper()
	ctx := context.Background()
	if err := e.App.AddPrincipal(ctx, store.Principal{ID: "owner", Tenant: "lab", Roles: []string{"researcher"}, Country: "DE"}); err != nil {
		tb.Fatal(err)
	}
	tok, err := e.Svc.CreateJoinToken(ctx, custody.Attributes{Env: env, Region: "eu-west", Jurisdiction: "DE", Host: "gpu-1", Owner: "owner"}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := custody.Join(ctx, e.URL, tok.String(), filepath.Join(tb.TempDir(), "runtime"))
	if err != nil {
		tb.Fatal(err)
	}
	return id
}
