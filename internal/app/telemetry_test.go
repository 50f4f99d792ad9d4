package app

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/strongroom/strongroom/internal/config"
	"github.com/strongroom/strongroom/internal/gateway"
	"github.com/strongroom/strongroom/internal/refmodel"
)

// TestOTLPTraces: with telemetry.otlp_endpoint set, the gateway's spans reach an OTLP/HTTP
// collector (the real exporter, protobuf over HTTP) in the client's trace, and the engine
// is handed that trace in traceparent.
func TestOTLPTraces(t *testing.T) {
	var mu sync.Mutex
	var posts [][]byte
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/v1/traces" && r.Header.Get("Content-Type") == "application/x-protobuf" {
			mu.Lock()
			posts = append(posts, b)
			mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()
	ctx := context.Background()
	a, _ := initApp(t, ctx, func(c *config.Config) { c.Telemetry.OTLPEndpoint = collector.URL })
	key := alice(t, ctx, a)
	importModel(t, ctx, a, "m", "1", "public")
	var seen sync.Map // path → traceparent (the gateway's health probe calls the engine too)
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.Path, r.Header.Get("traceparent"))
		(&refmodel.Server{Name: "m", Fixed: "ok"}).ServeHTTP(w, r)
	}))
	defer engine.Close()
	gw, err := a.OpenGateway(ctx, GatewayOptions{Routes: []gateway.Route{{Model: "m", Upstreams: []string{engine.URL + "/v1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	defer srv.Close()
	const traceID = "0af7651916cd43dd8448eb211c80319c"
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("traceparent", "00-"+traceID+"-b7ad6b7169203331-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	v, _ := seen.Load("/v1/chat/completions")
	engineTP, _ := v.(string)
	if resp.StatusCode != 200 || !strings.HasPrefix(engineTP, "00-"+traceID+"-") {
		t.Fatalf("status %d, engine traceparent %q", resp.StatusCode, engineTP)
	}
	srv.Close() // the request's span ends with its handler
	if err := a.closeTracing(); err != nil {
		t.Fatal(err)
	}
	id, _ := hex.DecodeString(traceID)
	mu.Lock()
	defer mu.Unlock()
	found := false
	for _, p := range posts {
		found = found || (bytes.Contains(p, id) && bytes.Contains(p, []byte("gateway chat")) && bytes.Contains(p, []byte("upstream")))
	}
	if !found {
		t.Fatalf("the collector got %d exports, none with trace %s's gateway and upstream spans", len(posts), traceID)
	}
}
