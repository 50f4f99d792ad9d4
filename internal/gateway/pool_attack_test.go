package gateway

// Outside attack tests (helper-30) on the stream loop's pooled line readers
// (streamReaders) together with the h1 server's pooled stream writers: engines that cut
// their stream mid-line, end lines with a bare CR, split a CRLF across reads, send a line
// longer than the reader, or go on after [DONE]; clients on keep-alive connections, some
// pipelining, some going away mid-stream. Each client must read exactly its own stream.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelrec"
)

var p30Tok = regexp.MustCompile(`u[0-9]+z`)

// p30Engine is what the engine sends for a stream of mode for user tok, as the writes
// (each flushed) it makes.
func p30Engine(mode, tok string) []string {
	ev := func(i int, eol string) string {
		return fmt.Sprintf(`data: {"id":"%s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%s-%d"}}]}`, tok, tok, i) + eol + eol
	}
	var w []string
	switch mode {
	case "plain":
		for i := range 30 {
			w = append(w, ev(i, "\n"))
		}
		w = append(w, "data: [DONE]\n\n")
	case "crlf":
		for i := range 30 {
			w = append(w, ev(i, "\r\n"))
		}
		w = append(w, "data: [DONE]\r\n\r\n")
	case "cr":
		for i := range 30 {
			w = append(w, ev(i, "\r"))
		}
		w = append(w, "data: [DONE]\r\r")
	case "split":
		// CRLF and CR line ends cut between the engine's writes (the CR at a read's end).
		for i := range 30 {
			e := ev(i, "\r\n")
			k := len(e) - 3 - i%3
			w = append(w, e[:k], e[k:])
		}
		w = append(w, "data: [DONE]\r", "\r")
	case "cut":
		for i := range 30 {
			w = append(w, ev(i, "\n"))
		}
		w = append(w, `data: {"id":"`+tok+`","cut":"`+tok+`-left-in-the-reader`)
	case "long":
		w = append(w, ev(0, "\n"))
		w = append(w, `data: {"id":"`+tok+`","long":"`+strings.Repeat(tok+".", 45<<10/len(tok))+"\"}\n\n")
		w = append(w, ev(1, "\n"), "data: [DONE]\n\n")
	case "after":
		for i := range 10 {
			w = append(w, ev(i, "\n"))
		}
		w = append(w, "data: [DONE]\n\n", ev(10, "\n"), "data: trailing "+tok+"\n\n")
	}
	return w
}

// p30Want is what the client must read: the engine's bytes with bare CRs made LFs (the
// gateway's lfReader; CRLF is kept).
func p30Want(mode, tok string) string {
	s := strings.Join(p30Engine(mode, tok), "")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' && (i+1 == len(s) || s[i+1] != '\n') {
			b.WriteByte('\n')
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

var p30Modes = []string{"plain", "crlf", "cr", "split", "cut", "long", "after", "gone"}

// p30Fixture is a gateway whose answers are recorded (a Batcher: [DONE] is held until
// the record is durable) in front of an engine streaming per p30Engine; "gone" streams
// until its request's context ends. live counts engine handlers running.
func p30Fixture(t *testing.T) (*fixture, *atomic.Int64) {
	var live atomic.Int64
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		live.Add(1)
		defer live.Add(-1)
		var req struct {
			Messages []struct{ Content string } `json:"messages"`
		}
		json.NewDecoder(r.Body).Decode(&req)
		mode, tok, _ := strings.Cut(req.Messages[0].Content, " ")
		w.Header().Set("Content-Type", "text/event-stream")
		if mode == "gone" {
			for i := 0; ; i++ {
				if _, err := fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s-%d\"}}]}\n\n", tok, i); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(time.Millisecond):
				}
			}
		}
		for _, s := range p30Engine(mode, tok) {
			io.WriteString(w, s)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(eng.Close)
	f := newFixture(t, func(c *Config) {
		c.RecordAnswers = true
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
	})
	b := audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, audit.BatcherConfig{MaxDelay: time.Millisecond})
	t.Cleanup(b.Close)
	f.gw.cfg.Records = b
	return f, &live
}

func p30Body(mode, tok string) string {
	return `{"model":"eng","stream":true,"messages":[{"role":"user","content":"` + mode + " " + tok + `"}]}`
}

// p30Check returns what is wrong with the stream a client of (mode, tok) read.
func p30Check(mode, tok, got string) string {
	for _, m := range p30Tok.FindAllString(got, -1) {
		if m != tok {
			return fmt.Sprintf("%s %s read another stream's token %s", mode, tok, m)
		}
	}
	if mode == "gone" {
		return ""
	}
	if want := p30Want(mode, tok); got != want {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		return fmt.Sprintf("%s %s: read %d bytes, want %d; first difference at %d: got %.80q want %.80q",
			mode, tok, len(got), len(want), i, got[i:], want[min(i, len(want)):])
	}
	return ""
}

// TestAttack30GatewayStreamsExact: 10 clients on keep-alive connections, each running
// streams of every odd engine shape (and some going away mid-stream): each reads exactly
// its engine's stream (bare CRs as LFs), the held [DONE] and what follows it included
// once recorded, a cut stream without a [DONE]; and no engine request outlives its client.
func TestAttack30GatewayStreamsExact(t *testing.T) {
	f, live := p30Fixture(t)
	var mu sync.Mutex
	var bad []string
	var next atomic.Int64
	var wg sync.WaitGroup
	for u := range 10 {
		wg.Go(func() {
			tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
			defer tr.CloseIdleConnections()
			hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}
			rnd := rand.New(rand.NewSource(int64(u)))
			for range 8 {
				mode := p30Modes[rnd.Intn(len(p30Modes))]
				tok := fmt.Sprintf("u%dz", 100+next.Add(1))
				req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions", strings.NewReader(p30Body(mode, tok)))
				req.Header.Set("Authorization", "Bearer "+f.alice)
				resp, err := hc.Do(req)
				if err != nil {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s %s: %v", mode, tok, err))
					mu.Unlock()
					continue
				}
				var got string
				if mode == "gone" {
					br := bufio.NewReader(resp.Body)
					line, _ := br.ReadString('\n')
					got = line
					resp.Body.Close() // mid-stream: the connection goes
				} else {
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					got = string(b)
					if err != nil {
						got += "<read error: " + err.Error() + ">"
					}
				}
				if s := p30Check(mode, tok, got); s != "" {
					mu.Lock()
					bad = append(bad, s)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	for _, s := range bad[:min(len(bad), 5)] {
		t.Error(s)
	}
	if len(bad) > 0 {
		t.Errorf("%d of 80 streams wrong", len(bad))
	}
	deadline := time.Now().Add(8 * time.Second)
	for live.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d engine streams still running after their clients went away", live.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAttack30GatewayPipelinedAfterStream: on one raw connection, a stream request
// pipelined with the next requests (another stream of another shape, the model list):
// each answer parses in order and the streams are exact — nothing of the first stream's
// reader or writer reaches the second.
func TestAttack30GatewayPipelinedAfterStream(t *testing.T) {
	f, _ := p30Fixture(t)
	addr := strings.TrimPrefix(f.srv.URL, "http://")
	post := func(mode, tok, extra string) string {
		body := p30Body(mode, tok)
		return fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s", f.alice, len(body), extra, body)
	}
	for round := range 4 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		modes := []string{"cut", "split", "long", "cr", "after"}
		var raw strings.Builder
		for i, m := range modes {
			raw.WriteString(post(m, fmt.Sprintf("u%dz", round*10+i), ""))
		}
		raw.WriteString("GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + f.alice + "\r\nConnection: close\r\n\r\n")
		go io.WriteString(c, raw.String())
		br := bufio.NewReader(c)
		for i, m := range modes {
			tok := fmt.Sprintf("u%dz", round*10+i)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("round %d, answer %d (%s): %v", round, i, m, err)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("round %d, answer %d (%s): %v after %d bytes", round, i, m, err, len(b))
			}
			if s := p30Check(m, tok, string(b)); s != "" {
				t.Fatalf("round %d, answer %d: %s", round, i, s)
			}
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the model list after the streams: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"object":"list"`) || p30Tok.Match(b) {
			t.Fatalf("the model list after the streams: %d %.200q", resp.StatusCode, b)
		}
		c.Close()
	}
}
