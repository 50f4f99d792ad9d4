package gateway

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/strongroom/strongroom/internal/modelrec"
)

// TestStreamReadersNotShared: the stream loop's line readers are reused (streamReaders).
// A stream that ends inside a line (the engine cut it short, bytes left in the reader) and
// streams of many clients at once: each client reads its own stream's bytes and nothing of
// another's.
func TestStreamReadersNotShared(t *testing.T) {
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		var req struct {
			Messages []struct{ Content string } `json:"messages"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		tok := req.Messages[0].Content
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 40 {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s-%d\"}}]}\n\n", tok, i)
			w.(http.Flusher).Flush() // one read each: streams overlap in the gateway
		}
		if strings.HasPrefix(tok, "cut") {
			// A line without its end, then the connection closes: the bytes stay in the
			// reader that read them.
			fmt.Fprintf(w, "data: {\"left-behind\":\"%s\"", tok)
			return
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	defer eng.Close()
	f := newFixture(t, func(c *Config) {
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
	})
	stream := func(tok string) (string, error) {
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"eng","stream":true,"messages":[{"role":"user","content":"`+tok+`"}]}`))
		req.Header.Set("Authorization", "Bearer "+f.alice)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	check := func(tok, body string) error {
		if !strings.Contains(body, `"`+tok+`-39"`) {
			return fmt.Errorf("stream %s: its last event is missing: %.300q", tok, body)
		}
		// Every token in the body is this stream's.
		for _, part := range strings.Split(body, `"content":"`)[1:] {
			if got, _, _ := strings.Cut(part, "-"); got != tok {
				return fmt.Errorf("stream %s read %q's content", tok, got)
			}
		}
		for _, part := range strings.Split(body, `"left-behind":"`)[1:] {
			if got, _, _ := strings.Cut(part, `"`); got != tok {
				return fmt.Errorf("stream %s read stream %s's cut line", tok, got)
			}
		}
		return nil
	}
	if body, err := stream("cut0"); err == nil && strings.Contains(body, "[DONE]") {
		t.Fatalf("a stream the engine cut short read as complete: %.300q", body)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 128)
	for g := range 12 {
		wg.Go(func() {
			for i := range 5 {
				tok := fmt.Sprintf("s%dx%d", g, i)
				if i == 2 {
					tok = fmt.Sprintf("cut%dx%d", g, i)
				}
				body, err := stream(tok)
				if err != nil {
					errs <- err
					return
				}
				if err := check(tok, body); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
