package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/strongroom/strongroom/internal/modelrec"
)

// TestEngineHeadersSharedNotWritten: a route with no upstream key, watermark or trace
// sends its engine requests with a header map shared by every such request. Requests to a
// keyed route (Authorization, the tenant's headers) in between must not leave anything in
// it: the keyless engine sees only Content-Type (and Accept for a stream), every time.
func TestEngineHeadersSharedNotWritten(t *testing.T) {
	var mu sync.Mutex
	var seen []http.Header
	keyless := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
		if r.Header.Get("Accept") == "text/event-stream" {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, `data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}`+"\n\n"+"data: [DONE]\n\n")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
	}))
	t.Cleanup(keyless.Close)
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "keyless", Upstreams: []string{keyless.URL + "/v1"}})
		c.Models.(records)["keyless"] = modelrec.Attrs{Classification: "public"}
	})
	url := f.srv.URL + "/v1/chat/completions"
	for i := 0; i < 3; i++ {
		for _, stream := range []string{"false", "true"} {
			for _, model := range []string{"demo", "keyless"} {
				resp, m := post(t, url, f.alice, `{"model":"`+model+`","max_tokens":4,"stream":`+stream+`,"messages":[{"role":"user","content":"hello"}]}`)
				if resp.StatusCode != 200 {
					t.Fatalf("%s stream=%s: %d %v", model, stream, resp.StatusCode, m)
				}
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 6 {
		t.Fatalf("the keyless engine got %d requests, want 6", len(seen))
	}
	for i, h := range seen {
		want := map[string]bool{"Content-Type": true, "Content-Length": true, "Accept-Encoding": true, "User-Agent": true}
		if i%2 == 1 {
			want["Accept"] = true
		}
		for k := range h {
			if !want[k] {
				t.Errorf("request %d to the keyless engine carried %s (%q): a header of another request's", i, k, strings.Join(h[k], ","))
			}
		}
		if h.Get("Content-Type") != "application/json" || (i%2 == 1) != (h.Get("Accept") == "text/event-stream") {
			t.Errorf("request %d to the keyless engine: headers %v", i, h)
		}
	}
	if len(engineHeaderJSON) != 1 || len(engineHeaderStream) != 2 {
		t.Fatalf("the shared engine headers were written to: %v, %v", engineHeaderJSON, engineHeaderStream)
	}
}
