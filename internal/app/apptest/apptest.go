// Package apptest builds a real deployment in a temporary data directory for tests and
// benchmarks of the pieces app wires: SQLite, a local KEK, the tessera audit log, Cedar
// policy, and the custody API over TLS on loopback.
package apptest

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"github.com/strongroom/strongroom/internal/app"
	"github.com/strongroom/strongroom/internal/attest"
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

// Lease grants a lease on name:version to the runtime of id (dev attestation), as
// `strongroom run` asks for one.
func (e *Env) Lease(tb testing.TB, id *custody.Identity, name, version string) store.Lease {
	tb.Helper()
	ctx := context.Background()
	rt, err := e.App.Store.GetRuntime(ctx, id.RuntimeID())
	if err != nil {
		tb.Fatal(err)
	}
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	pub := priv.PublicKey().Bytes()
	n, err := e.Svc.Nonce(ctx, rt.ID)
	if err != nil {
		tb.Fatal(err)
	}
	ev, _ := attest.DevEvidence(id.Key, attest.Binding(pub, n))
	g, err := e.Svc.Grant(ctx, rt, &id.Key.PublicKey, custody.LeaseRequest{Model: name, Version: version, PublicKey: pub, Nonce: n, Evidence: ev})
	if err != nil {
		tb.Fatal(err)
	}
	return g.Lease
}

// Person is a principal with an API key and an enrolled TOTP secret: a console user or an
// approver. Code gives a valid code for a later 30-second step than the last it gave (a
// code works once), waiting for the next step when it must.
type Person struct {
	ID, Key string
	secret  string
	last    int64
}

// Person creates principal id with roles, an API key and TOTP.
func (e *Env) Person(tb testing.TB, id string, roles ...string) *Person {
	tb.Helper()
	ctx := context.Background()
	if err := e.App.AddPrincipal(ctx, store.Principal{ID: id, Tenant: "lab", Roles: roles, Country: "DE"}); err != nil {
		tb.Fatal(err)
	}
	tok, _, err := e.App.CreateKey(ctx, id, time.Hour, nil)
	if err != nil {
		tb.Fatal(err)
	}
	u, err := e.Svc.EnrollTOTP(ctx, id)
	if err != nil {
		tb.Fatal(err)
	}
	k, err := otp.NewKeyFromURL(u)
	if err != nil {
		tb.Fatal(err)
	}
	return &Person{ID: id, Key: tok, secret: k.Secret()}
}

// Code is the next usable TOTP code.
func (p *Person) Code(tb testing.TB) string {
	tb.Helper()
	for {
		t := time.Now()
		now := t.Unix() / 30
		// The previous step is accepted for the rest of this one; not when it is about to
		// end (the server's clock may have moved on when it checks).
		least := now - 1
		if t.Unix()%30 > 25 {
			least = now
		}
		step := max(p.last+1, least)
		if step <= now+1 {
			p.last = step
			c, err := totp.GenerateCodeCustom(p.secret, time.Unix(step*30, 0), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
			if err != nil {
				tb.Fatal(err)
			}
			return c
		}
		time.Sleep(time.Until(time.Unix((now+1)*30, 0)) + 10*time.Millisecond)
	}
}
