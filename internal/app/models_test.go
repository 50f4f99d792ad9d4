package app

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/detect"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// TestModelSetReachesRunningGateways: a record changed through another App on the same
// data directory (another process, another replica) applies to a running gateway within
// its watch interval, without a restart; the change is in the log first.
func TestModelSetReachesRunningGateways(t *testing.T) {
	ctx := context.Background()
	a, dir := initApp(t, ctx, nil)
	a.ModelWatchInterval = 20 * time.Millisecond
	key := alice(t, ctx, a)
	send := serveGateway(t, ctx, a)
	if got := send(key); got != http.StatusOK {
		t.Fatalf("before: status %d", got)
	}
	other, err := Open(ctx, dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	attrs := modelrec.Attrs{Classification: "public", DeniedCountries: []string{"US"}}
	if _, err := other.Inventory.SetAttrs(ctx, "m", "1", attrs, "ops"); err != nil {
		t.Fatal(err)
	}
	other.Close()
	// The principal's registered country (US) is now denied: the gateway follows the record.
	deadline := time.Now().Add(30 * time.Second)
	for send(key) != http.StatusForbidden {
		if time.Now().After(deadline) {
			t.Fatal("the running gateway did not follow the new record")
		}
		time.Sleep(10 * time.Millisecond)
	}
	evs, err := a.Store.SearchAudit(ctx, store.AuditQuery{Kind: "model.set"})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || !strings.Contains(string(evs[0].Raw), `\"denied_countries\":[\"US\"]`) || !strings.Contains(string(evs[0].Raw), `"by":"ops"`) {
		t.Fatalf("model.set events: %d %v", len(evs), evs)
	}
}

// TestMigrateRoutes: attributes that routes carried in config.json move into the inventory
// record (logged), the file is rewritten without them, and a route whose model is not in
// the inventory stops the gateway from opening rather than losing its restrictions.
func TestMigrateRoutes(t *testing.T) {
	ctx := context.Background()
	a, dir := initApp(t, ctx, nil)
	importModel(t, ctx, a, "m", "1", "public")
	importModel(t, ctx, a, "m", "2", "public")
	a.Close()
	cfgPath := filepath.Join(dir, config.FileName)
	// Routes as configs carried them before the inventory became the record.
	legacy := func(r config.Route) {
		t.Helper()
		c, err := config.ReadRaw(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		c.Gateway.Routes = []config.Route{r}
		if err := config.Write(cfgPath, c); err != nil {
			t.Fatal(err)
		}
	}
	legacy(config.Route{Model: "m", Upstreams: []string{"http://127.0.0.1:1/v1"}, LegacyAttrs: config.LegacyAttrs{Classification: "restricted",
		DeniedCountries: []string{"IR"}, Hardening: &config.Hardening{LogitBias: "reject", MaxTopLogprobs: -1, MaxN: 1, MaxTokens: 64}}})
	if raw, _ := os.ReadFile(cfgPath); !strings.Contains(string(raw), `"denied_countries"`) {
		t.Fatalf("legacy config not written as before:\n%s", raw)
	}
	b, err := Open(ctx, dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	changed, err := b.MigrateRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(changed, " ") != "m:1 m:2" {
		t.Fatalf("changed %v, want both versions of m", changed)
	}
	for _, ver := range []string{"1", "2"} {
		v, err := b.Inventory.Get(ctx, "m", ver)
		if err != nil {
			t.Fatal(err)
		}
		if v.Classification != "restricted" || strings.Join(v.DeniedCountries, ",") != "IR" || v.Hardening == nil || v.Hardening.MaxTopLogprobs != -1 {
			t.Fatalf("m:%s after migration: %+v", ver, v.Attrs())
		}
	}
	raw, _ := os.ReadFile(cfgPath)
	if strings.Contains(string(raw), "classification") || strings.Contains(string(raw), "denied_countries") || !strings.Contains(string(raw), `"model": "m"`) {
		t.Fatalf("config after migration:\n%s", raw)
	}
	b.Close() // the log's index is complete once it closes

	// A route for a model the inventory does not have (an engine whose weights Strongroom
	// does not hold): its attributes become an external model's record.
	legacy(config.Route{Model: "ghost", Upstreams: []string{"http://127.0.0.1:1/v1"}, LegacyAttrs: config.LegacyAttrs{Classification: "restricted", DeniedCountries: []string{"CN"}}})
	c0, err := Open(ctx, dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := c0.MigrateRoutes(ctx); err != nil || strings.Join(changed, " ") != "ghost:external" {
		t.Fatalf("external migration: %v %v", changed, err)
	}
	g, err := c0.Inventory.Get(ctx, "ghost", "external")
	if err != nil || !g.External || g.Classification != "restricted" || strings.Join(g.DeniedCountries, ",") != "CN" {
		t.Fatalf("ghost:external %+v %v", g, err)
	}
	if _, err := c0.Inventory.Verify(ctx, "ghost", "external"); err == nil {
		t.Fatal("an external model verified as if it had weights")
	}
	c0.Close()
	// Attributes without a classification for a model the inventory does not have:
	// refused, the file untouched.
	legacy(config.Route{Model: "phantom", Upstreams: []string{"http://127.0.0.1:1/v1"}, LegacyAttrs: config.LegacyAttrs{DeniedCountries: []string{"CN"}}})
	before, _ := os.ReadFile(cfgPath)
	c, err := Open(ctx, dir, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if evs, _ := c.Store.SearchAudit(ctx, store.AuditQuery{Kind: "model.set"}); len(evs) != 2 {
		t.Fatalf("%d model.set events, want 2", len(evs))
	}
	if _, err := c.OpenGateway(ctx, GatewayOptions{}); err == nil || !strings.Contains(err.Error(), "phantom is not in the inventory") {
		t.Fatalf("gateway opened with an unmigratable route: %v", err)
	}
	if after, _ := os.ReadFile(cfgPath); string(after) != string(before) {
		t.Fatal("config rewritten although the migration failed")
	}
}

// TestExampleDetectSection: config holds the detect section as raw JSON, so the example
// config's is checked here, strictly, by the package that owns it.
func TestExampleDetectSection(t *testing.T) {
	c, err := config.ReadRaw("../../docs/config.example.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Detect) == 0 {
		t.Fatal("docs/config.example.json has no detect section")
	}
	if _, err := detect.ParseConfig(c.Detect); err != nil {
		t.Fatal(err)
	}
}
