package gateway

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// TestEngineEchoingItsKey: an engine (or a proxy in front of it) that writes the request's
// Authorization into its answer — an error page that shows the request, a debug echo —
// must not hand the route's upstream key to the tenant, in a whole answer or a stream: the
// engine's key is the gateway's secret, never the caller's.
func TestEngineEchoingItsKey(t *testing.T) {
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		auth := r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(r.URL.RawQuery, "stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Write([]byte("data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"you sent " + auth + "\"}}]}\n\n"))
			w.Write([]byte("data: [DONE]\n\n"))
			return
		}
		if strings.Contains(r.URL.RawQuery, "ok") {
			w.Write([]byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"you sent ` + auth + `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}`))
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"error":{"message":"bad credentials: ` + auth + `","type":"auth"}}`))
	}))
	t.Cleanup(echo.Close)
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "echo-err", Upstreams: []string{echo.URL + "/v1"}, UpstreamKey: engineKey},
			Route{Model: "echo-ok", Upstreams: []string{echo.URL + "/v1?ok=1"}, UpstreamKey: engineKey},
			Route{Model: "echo-stream", Upstreams: []string{echo.URL + "/v1?stream=1"}, UpstreamKey: engineKey})
		c.Models.(records)["echo-err"] = c.Models.(records)["demo"]
		c.Models.(records)["echo-ok"] = c.Models.(records)["demo"]
		c.Models.(records)["echo-stream"] = c.Models.(records)["demo"]
	})
	for _, model := range []string{"echo-err", "echo-ok", "echo-stream"} {
		stream := strings.HasSuffix(model, "stream")
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"`+model+`","stream":`+strconv.FormatBool(stream)+`,"messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+f.alice)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "Bearer") {
			t.Fatalf("%s: premise: the engine's echo is not in the answer (%d): %.200s", model, resp.StatusCode, b)
		}
		if strings.Contains(string(b), engineKey) {
			t.Errorf("%s: the route's upstream key reached the caller (%d): %s", model, resp.StatusCode, b)
		}
	}
}
