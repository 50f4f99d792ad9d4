package gateway

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/authn"
	"github.com/strongroom/strongroom/internal/store"
)

// connEngine answers every request with the number of the connection it came on, and
// reports each connection's end on closed.
func connEngine(t *testing.T) (*tcpEngine, chan int64) {
	closed := make(chan int64, 100)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, n int64) {
		defer func() { closed <- n }()
		for {
			if _, _, err := e.readReq(br); err != nil {
				return
			}
			if _, err := c.Write([]byte(okAnswer(strconv.FormatInt(n, 10)))); err != nil {
				return
			}
		}
	})
	return e, closed
}

// TestEnginePoolsPerTenant: a tenant's requests reuse its connections and never another
// tenant's, so a connection that desynchronizes can only mislead its own tenant.
func TestEnginePoolsPerTenant(t *testing.T) {
	e, _ := connEngine(t)
	cl := newEngineClient(time.Minute, http.DefaultClient)
	conns := map[string]map[string]bool{}
	for _, tenant := range []string{"acme", "acme", "globex", "acme", "globex", "", "globex", ""} {
		code, conn, err := engineDoFor(t, cl, tenant, context.Background(), e.url(), `{}`)
		if err != nil || code != 200 {
			t.Fatalf("%s: %d %v", tenant, code, err)
		}
		if conns[tenant] == nil {
			conns[tenant] = map[string]bool{}
		}
		conns[tenant][conn] = true
	}
	for a, ca := range conns {
		if len(ca) != 1 {
			t.Errorf("tenant %q used connections %v; want one, reused", a, ca)
		}
		for b, cb := range conns {
			for c := range ca {
				if a != b && cb[c] {
					t.Fatalf("tenants %q and %q shared engine connection %s", a, b, c)
				}
			}
		}
	}
}

// TestEngineIdleSweep: idle connections are closed once idle for idleFor, by a timer —
// not when the next request comes — and the pools are left empty.
func TestEngineIdleSweep(t *testing.T) {
	e, closed := connEngine(t)
	cl := newEngineClient(time.Minute, http.DefaultClient)
	cl.idleFor = 100 * time.Millisecond
	for _, tenant := range []string{"acme", "globex"} {
		if _, _, err := engineDoFor(t, cl, tenant, context.Background(), e.url(), `{}`); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case <-closed:
		case <-time.After(time.Minute):
			t.Fatal("an idle engine connection was not closed within a minute (idleFor 100ms)")
		}
	}
	cl.mu.Lock()
	n, total, sweeping := len(cl.idle), cl.idleTotal, cl.sweeping
	cl.mu.Unlock()
	if n != 0 || total != 0 || sweeping {
		t.Fatalf("after the sweep: %d pools, %d idle, sweeping %v", n, total, sweeping)
	}
	// The client goes on: a new connection, pooled and swept again.
	if _, conn, err := engineDoFor(t, cl, "acme", context.Background(), e.url(), `{}`); err != nil || conn != "2" {
		t.Fatalf("after the sweep: connection %s, %v", conn, err)
	}
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("the sweep did not come back for a connection pooled after it stopped")
	}
}

// TestEngineIdleTotal: many tenants cannot make the client keep more than maxTotal idle
// connections (each answer's connection beyond it is closed).
func TestEngineIdleTotal(t *testing.T) {
	e, closed := connEngine(t)
	cl := newEngineClient(time.Minute, http.DefaultClient)
	cl.maxTotal = 3
	var wg sync.WaitGroup
	var bodies []func()
	var mu sync.Mutex
	for i := range 6 { // six tenants' answers open at once: six connections
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, e.url()+"/chat/completions", nil)
			resp, err := cl.DoFor(req.Context(), fmt.Sprint("tenant", i), req, []byte(`{}`))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			bodies = append(bodies, func() { readAllClose(resp) })
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, b := range bodies {
		b()
	}
	for range 3 {
		select {
		case <-closed:
		case <-time.After(time.Minute):
			t.Fatal("connections beyond maxTotal were not closed")
		}
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.idleTotal != 3 || len(cl.idle) != 3 {
		t.Fatalf("%d idle in %d pools; want 3 in 3", cl.idleTotal, len(cl.idle))
	}
}

func readAllClose(resp *http.Response) {
	var b [512]byte
	for {
		if _, err := resp.Body.Read(b[:]); err != nil {
			break
		}
	}
	resp.Body.Close()
}

// TestGatewayEnginePoolsPerTenant: through the gateway, requests of principals of one
// tenant share engine connections and requests of another tenant never do.
func TestGatewayEnginePoolsPerTenant(t *testing.T) {
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, n int64) {
		for {
			if _, _, err := e.readReq(br); err != nil {
				return
			}
			b := fmt.Sprintf(`{"id":"x","object":"chat.completion","created":1,"model":"demo","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"conn %d"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`, n)
			if _, err := c.Write([]byte(okAnswer(b))); err != nil {
				return
			}
		}
	})
	f := newFixture(t, func(c *Config) {
		c.Routes = []Route{{Model: "demo", Upstreams: []string{e.url()}, UpstreamKey: engineKey}}
	})
	ctx := context.Background()
	f.st.PutPrincipal(ctx, store.Principal{ID: "carol", Tenant: "globex", Screening: "clear"})
	carol, _, err := authn.NewKeys(f.st, nil, time.Second).Create(ctx, "carol", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(key string) string {
		t.Helper()
		resp, m := post(t, f.srv.URL+"/v1/chat/completions", key, `{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`)
		ch, _ := m["choices"].([]any)
		if resp.StatusCode != 200 || len(ch) != 1 {
			t.Fatalf("%d %v", resp.StatusCode, m)
		}
		msg, _ := ch[0].(map[string]any)["message"].(map[string]any)
		return fmt.Sprint(msg["content"])
	}
	byTenant := map[string]map[string]bool{"acme": {}, "globex": {}}
	for _, who := range []struct{ tenant, key string }{{"acme", f.alice}, {"globex", carol}, {"acme", f.bob}, {"globex", carol}, {"acme", f.alice}} {
		byTenant[who.tenant][conn(who.key)] = true
	}
	for c := range byTenant["acme"] {
		if byTenant["globex"][c] {
			t.Fatalf("tenants acme and globex shared engine connection %q: %v", c, byTenant)
		}
	}
	if len(byTenant["acme"]) != 1 || len(byTenant["globex"]) != 1 {
		t.Fatalf("each tenant's sequential requests should reuse one connection: %v", byTenant)
	}
}

// TestEngineTLSPoolsPerTenant: https engines go through net/http's Transport; there too a
// connection carries one tenant's requests.
func TestEngineTLSPoolsPerTenant(t *testing.T) {
	var mu sync.Mutex
	ids := map[string]int{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		id, ok := ids[r.RemoteAddr]
		if !ok {
			id = len(ids)
			ids[r.RemoteAddr] = id
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, id)
	}))
	defer srv.Close()
	cl := newEngineClient(time.Minute, srv.Client())
	byTenant := map[string]map[string]bool{}
	for _, tenant := range []string{"acme", "globex", "acme", "globex", "acme"} {
		_, conn, err := engineDoFor(t, cl, tenant, context.Background(), srv.URL+"/v1", `{}`)
		if err != nil {
			t.Fatal(err)
		}
		if byTenant[tenant] == nil {
			byTenant[tenant] = map[string]bool{}
		}
		byTenant[tenant][conn] = true
	}
	for c := range byTenant["acme"] {
		if byTenant["globex"][c] {
			t.Fatalf("tenants shared a TLS connection to the engine: %v", byTenant)
		}
	}
	if len(byTenant["acme"]) != 1 || len(byTenant["globex"]) != 1 {
		t.Fatalf("each tenant's sequential requests should reuse one connection: %v", byTenant)
	}
}

// TestEngineTLSTenantsSwept: a tenant's https client not used for idleFor is dropped and
// its idle connections closed — tenants that come and go leave no Transport behind — and
// the tenant's next request gets a fresh one.
func TestEngineTLSTenantsSwept(t *testing.T) {
	var mu sync.Mutex
	open := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch s {
		case http.StateNew:
			open++
		case http.StateClosed, http.StateHijacked:
			open--
		}
	}
	srv.StartTLS()
	defer srv.Close()
	cl := newEngineClient(time.Minute, srv.Client())
	cl.idleFor = 20 * time.Millisecond
	for _, tenant := range []string{"t1", "t2", "t3"} {
		if _, _, err := engineDoFor(t, cl, tenant, context.Background(), srv.URL+"/v1", `{}`); err != nil {
			t.Fatal(err)
		}
	}
	for {
		cl.mu.Lock()
		n := len(cl.tenants)
		cl.mu.Unlock()
		mu.Lock()
		o := open
		mu.Unlock()
		if n == 0 && o == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, _, err := engineDoFor(t, cl, "t1", context.Background(), srv.URL+"/v1", `{}`); err != nil {
		t.Fatal(err)
	}
	// On a slow machine the 20 ms sweep may already have dropped the new client by the
	// time we look: one client with a sweep scheduled, or none because the sweep ran.
	cl.mu.Lock()
	n, scheduled := len(cl.tenants), cl.sweeping
	cl.mu.Unlock()
	if n > 1 || (n == 1 && !scheduled) {
		t.Fatalf("after a new request: %d tenant clients, sweep scheduled %v; want 1 and true (or 0: already swept)", n, scheduled)
	}
	for n > 0 { // the sweep scheduled by the new request drops it again
		time.Sleep(5 * time.Millisecond)
		cl.mu.Lock()
		n = len(cl.tenants)
		cl.mu.Unlock()
	}
}
