package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelrec"
)

// TestAttackCommitNowWhenTheLastOtherLeaves: the rule "when every request the gateway
// serves is waiting on a record, the group is committed now" must also hold when the
// state is reached by a request that leaves without a record to wait on — here a client
// that gives up on a hung engine. Request A's answer waits on its record while B hangs
// (A is not alone: no commit yet); B's client goes away, B ends with nothing to await;
// A is now the only request served and waits on a record, so its group must be
// committed without waiting out the group delay (an hour here).
func TestAttackCommitNowWhenTheLastOtherLeaves(t *testing.T) {
	arrived, stop := make(chan struct{}, 1), make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(func() { close(stop); hung.Close() }) // after the fixture's cleanups (the batcher's Close releases A)
	f := newFixture(t, func(c *Config) {
		c.RecordAnswers = true
		c.Routes = append(c.Routes, Route{Model: "hung", Upstreams: []string{hung.URL + "/v1"}})
		c.Models.(records)["hung"] = modelrec.Attrs{Classification: "public"}
	})
	b := audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, audit.BatcherConfig{MaxDelay: time.Hour})
	t.Cleanup(b.Close)
	f.gw.cfg.Records = b
	url := f.srv.URL + "/v1/chat/completions"

	// B: a request to the hung engine, abandoned later by its client.
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		req, _ := http.NewRequestWithContext(ctxB, http.MethodPost, url, strings.NewReader(`{"model":"hung","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("Authorization", "Bearer "+f.alice)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-arrived

	// A: an ordinary answer, which waits on its record while B is in flight.
	aDone := make(chan string, 1)
	go func() {
		resp, raw := postRaw(t, url, f.alice, `{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"hi"}]}`)
		aDone <- fmt.Sprintf("%d %.80s", resp.StatusCode, raw)
	}()
	for f.gw.waiting.Load() < 1 {
		select {
		case msg := <-aDone:
			t.Fatalf("A completed while B was in flight: %s", msg) // fine for the rule, but then nothing was tested
		default:
			time.Sleep(time.Millisecond)
		}
	}
	cancelB()
	<-bDone
	for f.gw.inflight.Load() > 1 { // B's handler has returned
		time.Sleep(time.Millisecond)
	}
	select {
	case msg := <-aDone:
		if !strings.HasPrefix(msg, "200 ") {
			t.Fatalf("A: %s", msg)
		}
	case <-time.After(30 * time.Second): // the group delay is an hour; a commit takes ms
		t.Fatalf("A is the only request served and waits on its record (waiting %d, in flight %d), yet its group waits out the delay",
			f.gw.waiting.Load(), f.gw.inflight.Load())
	}
}
