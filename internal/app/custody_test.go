package app_test

import (
	"context"
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/app/apptest"
	"github.com/strongroom/strongroom/internal/attest"
	"github.com/strongroom/strongroom/internal/custody"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/policy"
	"github.com/strongroom/strongroom/internal/store"
)

// BenchmarkGrant: one lease grant without approvals — nonce, dev attestation, Cedar policy,
// egress charge, DEK unwrap, HPKE seal, lease row, and the audit record (durable: fsynced
// into the tessera log) — next to its cheapest parts measured in the same run.
func BenchmarkGrant(b *testing.B) {
	e := apptest.New(b, nil)
	e.Import(b, "m", "1", "public", map[string][]byte{"w.bin": make([]byte, 4096)})
	id := e.Join(b, "prod")
	ctx := context.Background()
	rt, err := e.App.Store.GetRuntime(ctx, id.RuntimeID())
	if err != nil {
		b.Fatal(err)
	}
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	pub := priv.PublicKey().Bytes()
	set, _ := policy.Load("")
	hpub, _ := hpke.NewDHKEMPublicKey(priv.PublicKey())
	dek := make([]byte, 32)
	var grants, seals, decides []time.Duration
	for b.Loop() {
		t0 := time.Now()
		n, err := e.Svc.Nonce(ctx, rt.ID)
		if err != nil {
			b.Fatal(err)
		}
		ev, err := attest.DevEvidence(id.Key, attest.Binding(pub, n))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := e.Svc.Grant(ctx, rt, &id.Key.PublicKey, custody.LeaseRequest{Model: "m", Version: "1", PublicKey: pub, Nonce: n, Evidence: ev}); err != nil {
			b.Fatal(err)
		}
		grants = append(grants, time.Since(t0))
		t0 = time.Now()
		hpke.Seal(hpub, hpke.HKDFSHA256(), hpke.AES256GCM(), []byte("info"), dek)
		seals = append(seals, time.Since(t0))
		t0 = time.Now()
		set.DecideLease(policy.LeaseRequest{Runtime: policy.Runtime{ID: rt.ID, Env: "prod", Jurisdiction: "DE"}, Model: policy.Model{Name: "m", Classification: "public"}})
		decides = append(decides, time.Since(t0))
	}
	for _, m := range []struct {
		name string
		ds   []time.Duration
	}{{"grant", grants}, {"hpke-seal", seals}, {"cedar-decide", decides}} {
		slices.Sort(m.ds)
		b.ReportMetric(float64(m.ds[len(m.ds)/2])/1e6, m.name+"-p50-ms")
		b.ReportMetric(float64(m.ds[len(m.ds)*99/100])/1e6, m.name+"-p99-ms")
	}
}

// TestLeaseFollowsModelRecord: custody judges a lease by the same inventory record the
// gateway serves from: a runtime in a country the record denies (or does not allow) gets
// no key, and the change applies to the next request.
func TestLeaseFollowsModelRecord(t *testing.T) {
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": make([]byte, 64)})
	id := e.Join(t, "prod") // jurisdiction DE
	ctx := context.Background()
	rt, err := e.App.Store.GetRuntime(ctx, id.RuntimeID())
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	pub := priv.PublicKey().Bytes()
	grant := func() error {
		n, err := e.Svc.Nonce(ctx, rt.ID)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := attest.DevEvidence(id.Key, attest.Binding(pub, n))
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.Svc.Grant(ctx, rt, &id.Key.PublicKey, custody.LeaseRequest{Model: "m", Version: "1", PublicKey: pub, Nonce: n, Evidence: ev})
		return err
	}
	if err := grant(); err != nil {
		t.Fatalf("no restriction: %v", err)
	}
	for _, c := range []struct {
		attrs modelrec.Attrs
		ok    bool
	}{
		{modelrec.Attrs{Classification: "public", DeniedCountries: []string{"DE"}}, false},
		{modelrec.Attrs{Classification: "public", AllowedCountries: []string{"US"}}, false},
		{modelrec.Attrs{Classification: "public", AllowedCountries: []string{"US", "DE"}}, true},
	} {
		if _, err := e.App.Inventory.SetAttrs(ctx, "m", "1", c.attrs, "ops"); err != nil {
			t.Fatal(err)
		}
		if err := grant(); (err == nil) != c.ok {
			t.Fatalf("%+v: grant err %v, want ok=%v", c.attrs, err, c.ok)
		}
	}
}

// TestReleaseLease: a runtime hands its own lease back and it ends at once; another
// runtime cannot end it; releasing twice is not an error.
func TestReleaseLease(t *testing.T) {
	e := apptest.New(t, nil)
	e.Import(t, "m", "1", "public", map[string][]byte{"w.bin": make([]byte, 64)})
	ctx := context.Background()
	ids := []*custody.Identity{e.Join(t, "prod"), e.Join(t, "prod")}
	var rts []store.Runtime
	for _, id := range ids {
		rt, err := e.App.Store.GetRuntime(ctx, id.RuntimeID())
		if err != nil {
			t.Fatal(err)
		}
		rts = append(rts, rt)
	}
	lease := e.Lease(t, ids[0], "m", "1")
	live := func() int {
		ls, err := e.App.Store.ListLeases(ctx, store.LeaseQuery{Model: "m", LiveAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return len(ls)
	}
	if _, err := e.Svc.Release(ctx, rts[1], lease.ID); err == nil || live() != 1 {
		t.Fatalf("another runtime released the lease: %v, live %d", err, live())
	}
	for range 2 {
		if _, err := e.Svc.Release(ctx, rts[0], lease.ID); err != nil {
			t.Fatal(err)
		}
		if live() != 0 {
			t.Fatal("released lease still live")
		}
	}
}

// TestCustodyBuiltOnce: the App builds one custody service and loads one CA: every caller
// (serve's listener, dev's runtime, unseal approvals, the CLI) shares them, and the TLS
// certificate the listener serves chains to the CA the service issues runtimes from.
func TestCustodyBuiltOnce(t *testing.T) {
	e := apptest.New(t, nil)
	ctx := context.Background()
	s1, err := e.App.Custody(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := e.App.Custody(ctx)
	if err != nil || s1 != s2 || s1 != e.Svc {
		t.Fatalf("custody built more than once: %p %p %p (%v)", s1, s2, e.Svc, err)
	}
	tc, err := e.App.CustodyTLS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	leaf := tc.Certificates[0].Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(tc.Certificates[0].Certificate[0]); err != nil {
			t.Fatal(err)
		}
	}
	id := e.Join(t, "prod")
	roots := x509.NewCertPool()
	roots.AddCert(id.CA)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
		t.Fatalf("listener certificate does not chain to the runtimes' CA: %v", err)
	}
}
