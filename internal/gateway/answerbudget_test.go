package gateway

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAnswersHeldBounded: engines' answers read whole share one bound across requests. An
// engine holds a first answer of 600 KiB open; a second of 600 KiB would take what the
// answers hold over the bound (1 MiB here): it is refused 503, and once the first went out
// a third is served — what an answer held is given back.
func TestAnswersHeldBounded(t *testing.T) {
	old := maxAnswersHeld
	maxAnswersHeld = 1 << 20
	t.Cleanup(func() { maxAnswersHeld = old })
	const head = `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`
	const tail = `"},"finish_reason":"stop"}]}`
	pad := strings.Repeat("a", 600<<10)
	sent, finish := make(chan struct{}), make(chan struct{})
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, head+pad)
		w.(http.Flusher).Flush()
		select {
		case sent <- struct{}{}: // the first answer: held until the test says
			<-finish
		default:
		}
		io.WriteString(w, tail)
	}))
	t.Cleanup(eng.Close)
	f := newFixture(t, a34Route("big", eng.URL+"/v1", false))
	post := func() (int, string) {
		resp, err := a43Do(t, http.DefaultClient, context.Background(), f.srv.URL+"/v1/chat/completions", "a34-acme", a43Chat("big", "hi", false))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	first := make(chan int, 1)
	go func() {
		code, _ := post()
		first <- code
	}()
	<-sent // the first answer's 600 KiB are at the gateway, or on their way
	a43Poll(t, "the first answer's bytes held", func() bool { return f.gw.answered.Load() >= 600<<10 })
	if code, body := post(); code != http.StatusServiceUnavailable {
		t.Errorf("a second answer over the bound: status %d (%.80s), want 503", code, body)
	}
	close(finish)
	if code := <-first; code != http.StatusOK {
		t.Errorf("the first answer: status %d, want 200", code)
	}
	// Given back as the request ends (just after its last byte went out).
	a43Poll(t, "every answer's bytes given back", func() bool { return f.gw.answered.Load() == 0 })
	go func() { <-sent }() // the third is not held
	if code, body := post(); code != http.StatusOK || !strings.Contains(body, pad) {
		t.Errorf("after the first went out, an answer within the bound: status %d, %d bytes; want 200 and the whole answer", code, len(body))
	}
}
