package gateway

// Outside round 43: a hostile or broken engine, and clients, around streamed and
// non-streamed answers — the relay (h1's chunk writer, the engine client's chunked
// reader) and the request records built in pooled buffers. Every test asserts the secure
// behaviour: it fails while the weakness exists.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// a43Records keeps every record the gateway submits, parsed at submission (the gateway
// reuses its buffer once SubmitEncoded returns: RecordSink); records the log would refuse
// are kept as errors, not panics.
type a43Records struct {
	mu  sync.Mutex
	evs []*audit.Event
	bad []string
}

func (r *a43Records) SubmitEncoded(_ context.Context, rec store.AuditEvent) audit.Future {
	ev, err := parseRecord(rec)
	r.mu.Lock()
	if err != nil {
		r.bad = append(r.bad, fmt.Sprintf("%v: %.300q", err, rec.Raw))
	} else {
		r.evs = append(r.evs, ev)
	}
	r.mu.Unlock()
	return func() (uint64, error) { return 0, nil }
}

func (*a43Records) Healthy() error { return nil }

// find returns the records of kind whose prompt_hmac is digest.
func (r *a43Records) find(kind audit.Kind, digest string) []*audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*audit.Event
	for _, ev := range r.evs {
		if ev.Kind == kind && ev.Fields["prompt_hmac"] == digest {
			out = append(out, ev)
		}
	}
	return out
}

// a43PromptDigest is the prompt_hmac the gateway writes for a chat request body.
func a43PromptDigest(t *testing.T, f *fixture, body string) string {
	t.Helper()
	feat, err := parseRequest([]byte(body), "chat")
	if err != nil {
		t.Fatal(err)
	}
	return f.gw.cfg.Redactor.Digest(string(feat.prompt()))
}

// a43Payloads is the output HMAC's input for an event stream as a client read it: each
// data line's value ("data:", one optional space) with its line end.
func a43Payloads(raw string) []string {
	var out []string
	for _, line := range strings.SplitAfter(raw, "\n") {
		if v, ok := strings.CutPrefix(line, "data:"); ok {
			out = append(out, strings.TrimPrefix(v, " "))
		}
	}
	return out
}

func a43HMAC(f *fixture, parts ...string) string {
	h := f.gw.cfg.Redactor.NewHash()
	defer f.gw.cfg.Redactor.Release(h)
	for _, p := range parts {
		io.WriteString(h, p)
	}
	return audit.HashDigest(h)
}

// a43Poll waits (up to 8 s) for cond.
func a43Poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for: %s", what)
}

func a43Chat(model, content string, stream bool) string {
	return fmt.Sprintf(`{"model":%q,"stream":%v,"messages":[{"role":"user","content":%q}]}`, model, stream, content)
}

func a43Do(t *testing.T, c *http.Client, ctx context.Context, url, key, body string) (*http.Response, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	return c.Do(req)
}

func a43Event(content string, eol string) string {
	return `data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"` + content + `"}}]}` + eol + eol
}

func a43Chunk(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }

// TestAttack43StreamEventEndsFlushed: each event reaches the client before the engine
// sends the next, whatever line end the engine uses — the event-stream format allows LF,
// CRLF and CR, and CRLF is what sse-starlette (llama-cpp-python's server and others)
// writes. The engine sends its second event only once the client has read the first: an
// event the gateway holds never reaches the client, whose 30 s deadline ends the test.
func TestAttack43StreamEventEndsFlushed(t *testing.T) {
	for _, tc := range []struct{ name, eol string }{{"lf", "\n"}, {"crlf", "\r\n"}, {"cr", "\r"}} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan struct{})
			var held atomic.Bool
			eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, a43Event("one", tc.eol))
				w.(http.Flusher).Flush()
				// Nothing more until the client has read the first event (no timer: a slow
				// machine cannot fail it). Held by the gateway, it never comes, and the
				// client's deadline ends the test.
				select {
				case <-got:
				case <-r.Context().Done():
					held.Store(true)
					return
				}
				io.WriteString(w, a43Event("two", tc.eol)+"data: [DONE]"+tc.eol+tc.eol)
			}))
			t.Cleanup(eng.Close)
			f := newFixture(t, a34Route("eng", eng.URL+"/v1", false))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			resp, err := a43Do(t, http.DefaultClient, ctx, f.srv.URL+"/v1/chat/completions", "a34-acme", a43Chat("eng", "hi", true))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			var once sync.Once
			var all strings.Builder
			for {
				line, err := br.ReadString('\n')
				all.WriteString(line)
				if strings.Contains(line, `"one"`) {
					once.Do(func() { close(got) })
				}
				if err != nil {
					break
				}
			}
			if held.Load() || !strings.Contains(all.String(), `"one"`) {
				t.Fatalf("%s-ended events: the first event did not reach the client while the engine waited for it (30 s); client read %q", tc.name, all.String())
			}
			if !strings.Contains(all.String(), `"two"`) || !sseDone(all.String()) {
				t.Fatalf("stream incomplete: %q", all.String())
			}
		})
	}
}

// a43CutEngine streams two events in chunked framing, then ends the answer as the
// request's prompt (its mode) says: "complete" with [DONE] and the last chunk; the other
// modes break the stream the way a crashing or broken engine does.
func a43CutEngine(t *testing.T) *tcpEngine {
	return newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for {
			_, body, err := e.readReq(br)
			if err != nil {
				return
			}
			mode := a34Prompt([]byte(body))
			events := a43Event("part0 ", "\n") + a43Event("part1 ", "\n")
			if mode == "length-lies" {
				// Content-Length promises more than the engine sends before it closes.
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: "+strconv.Itoa(len(events)+4096)+"\r\n\r\n"+events)
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+a43Chunk(events))
			switch mode {
			case "complete":
				io.WriteString(c, a43Chunk("data: [DONE]\n\n")+"0\r\n\r\n")
				continue
			case "close-mid-chunk": // the engine process dies mid-chunk
				io.WriteString(c, "100\r\ndata: {\"id\":\"c\",")
				return
			case "close-between-chunks": // ... or between two chunks: no last chunk
				return
			case "bad-chunk-size": // framing the gateway refuses; the connection stays open
				io.WriteString(c, "zz\r\n"+a43Event("part2 ", "\n")+"\r\n")
			case "no-crlf-after-data":
				ev := a43Event("part2 ", "\n")
				io.WriteString(c, fmt.Sprintf("%x\r\n%sXX", len(ev), ev))
			}
			io.Copy(io.Discard, br) // until the gateway closes the connection
			return
		}
	})
}

var a43CutModes = []string{"close-mid-chunk", "close-between-chunks", "bad-chunk-size", "no-crlf-after-data", "length-lies"}

// TestAttack43EngineCutStreamLooksComplete: an engine whose stream breaks (it dies mid-
// chunk, leaves out the last chunk, mis-frames a chunk, sends less than its
// Content-Length) must not reach the client as a well-ended answer. Reading the engine
// directly, net/http and the openai-go client see the break (io.ErrUnexpectedEOF, a
// framing error); through the gateway they must too — the gateway must abort the client's
// response (as httputil.ReverseProxy does, http.ErrAbortHandler), not end its chunked
// body cleanly. The openai-go client ends a stream at EOF without [DONE] with no error:
// a clean end hands it a truncated answer as a complete one.
func TestAttack43EngineCutStreamLooksComplete(t *testing.T) {
	e := a43CutEngine(t)
	f := newFixture(t, a34Route("cut", e.url(), false))
	cl := f.client("a34-acme")
	read := func(mode string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
		defer cancel()
		stream := cl.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model: "cut", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(mode)}})
		var content strings.Builder
		for stream.Next() {
			for _, ch := range stream.Current().Choices {
				content.WriteString(ch.Delta.Content)
			}
		}
		return content.String(), stream.Err()
	}
	if content, err := read("complete"); err != nil || content != "part0 part1 " {
		t.Fatalf("control: a complete stream read as %q, %v", content, err)
	}
	for _, mode := range a43CutModes {
		t.Run(mode, func(t *testing.T) {
			content, err := read(mode)
			if err == nil {
				t.Errorf("openai-go: the engine's stream broke (%s) and the client read %q as a complete answer (stream.Err() == nil)", mode, content)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer cancel()
			resp, err := a43Do(t, http.DefaultClient, ctx, f.srv.URL+"/v1/chat/completions", "a34-acme", a43Chat("cut", mode, true))
			if err != nil {
				return // refused or aborted: not a clean answer
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Errorf("net/http: the engine's stream broke (%s) and the gateway's response ended cleanly (status %d, %d bytes, [DONE] %v): %.200q",
					mode, resp.StatusCode, len(b), sseDone(string(b)), b)
			}
		})
	}
}

// TestAttack43EngineCutStreamRecordedAsWhole: the record of a stream the engine broke off
// must not read as the record of a whole answer. The gateway marks a stream its client
// left ("client went away mid-stream": "the record must not read as a whole answer"); a
// stream the engine cut (dead engine, bad framing, short body) gets the same status and
// reason as a complete one.
func TestAttack43EngineCutStreamRecordedAsWhole(t *testing.T) {
	e := a43CutEngine(t)
	recs := &a43Records{}
	f := newFixture(t, func(c *Config) {
		a34Route("cut", e.url(), false)(c)
		c.Records = recs
	})
	record := func(mode string) *audit.Event {
		body := a43Chat("cut", mode, true)
		resp, err := a43Do(t, http.DefaultClient, context.Background(), f.srv.URL+"/v1/chat/completions", "a34-acme", body)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		digest := a43PromptDigest(t, f, body)
		var evs []*audit.Event
		a43Poll(t, "the record of "+mode, func() bool { evs = recs.find(audit.KindRequest, digest); return len(evs) > 0 })
		if len(evs) != 1 {
			t.Fatalf("%s: %d request records", mode, len(evs))
		}
		return evs[0]
	}
	whole := record("complete")
	for _, mode := range a43CutModes {
		t.Run(mode, func(t *testing.T) {
			ev := record(mode)
			if ev.Fields["status"] == whole.Fields["status"] && ev.Reason == whole.Reason {
				t.Errorf("a stream the engine broke off (%s) is recorded as a whole answer: status %s, reason %q — the same as a complete stream's",
					mode, ev.Fields["status"], ev.Reason)
			}
		})
	}
	if len(recs.bad) > 0 {
		t.Errorf("records the log would refuse: %v", recs.bad)
	}
}

// TestAttack43OversizedAnswerTruncated: a non-streamed engine answer over the gateway's
// 64 MiB bound must be refused, not cut at the bound and relayed as a complete 200 (a
// JSON document cut in the middle, with a Content-Length or a clean chunked end, and a
// record of status 200 with the digest of the cut bytes).
func TestAttack43OversizedAnswerTruncated(t *testing.T) {
	// The bound made 1 MiB for the test (64 MiB under -race took 6–10 s): the same code.
	old := maxAnswer
	maxAnswer = 1 << 20
	t.Cleanup(func() { maxAnswer = old })
	pad := int(maxAnswer) + 1<<10
	head := `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`
	tail := `"},"finish_reason":"stop"}]}`
	total := len(head) + pad + len(tail)
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		if _, _, err := e.readReq(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(total)+"\r\n\r\n"+head)
		block := bytes.Repeat([]byte("a"), 1<<20)
		for left := pad; left > 0; left -= len(block) {
			if _, err := c.Write(block[:min(left, len(block))]); err != nil {
				return
			}
		}
		io.WriteString(c, tail)
	})
	recs := &a43Records{}
	f := newFixture(t, func(c *Config) {
		a34Route("big", e.url(), false)(c)
		c.Records = recs
	})
	resp, err := a43Do(t, http.DefaultClient, context.Background(), f.srv.URL+"/v1/chat/completions", "a34-acme", a43Chat("big", "big", false))
	if err != nil {
		t.Fatal(err)
	}
	var last [64]byte
	var n int64
	buf := make([]byte, 1<<20)
	var rerr error
	for {
		m, err := resp.Body.Read(buf)
		if m > 0 {
			n += int64(m)
			k := copy(last[:], last[min(m, len(last)):])
			copy(last[k:], buf[max(0, m-(len(last)-k)):m])
		}
		if err != nil {
			if err != io.EOF {
				rerr = err
			}
			break
		}
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && rerr == nil && n != int64(total) {
		t.Fatalf("an engine answer of %d bytes was relayed cut to %d bytes as a complete 200 (ends %q); the client cannot tell", total, n, bytes.TrimRight(last[:], "\x00"))
	}
}

// TestAttack43ShapedStreamDigest: the record's output HMAC is the digest of the output the
// client received. A non-streamed answer whose logprobs are shaped is digested as shaped
// (what the client got); a streamed one must be too — digested as the engine sent it, a
// leaked (shaped) answer cannot be matched to its record, and the record holds the digest
// of values no client was given.
func TestAttack43ShapedStreamDigest(t *testing.T) {
	chunk := `{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.123456789,"top_logprobs":[{"token":"x","logprob":-0.123456789}]}]}}]}`
	whole := `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"logprobs":{"content":[{"token":"x","logprob":-0.123456789,"top_logprobs":[{"token":"x","logprob":-0.123456789}]}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`
	for _, stream := range []bool{false, true} {
		t.Run("stream="+strconv.FormatBool(stream), func(t *testing.T) {
			eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if stream {
					w.Header().Set("Content-Type", "text/event-stream")
					io.WriteString(w, "data: "+chunk+"\n\ndata: "+chunk+"\n\ndata: [DONE]\n\n")
					return
				}
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, whole)
			}))
			t.Cleanup(eng.Close)
			recs := &a43Records{}
			f := newFixture(t, func(c *Config) {
				a34Route("eng", eng.URL+"/v1", false)(c)
				c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public", Hardening: &Hardening{MaxTopLogprobs: 5, RoundLogprobs: 2}}
				c.Records, c.RecordAnswers = recs, true
			})
			body := fmt.Sprintf(`{"model":"eng","stream":%v,"logprobs":true,"top_logprobs":1,"messages":[{"role":"user","content":"shape"}]}`, stream)
			resp, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", "a34-acme", body)
			if resp.StatusCode != 200 || strings.Contains(raw, "23456789") {
				t.Fatalf("status %d, answer %q", resp.StatusCode, raw)
			}
			want := a43HMAC(f, raw)
			if stream {
				if !sseDone(raw) {
					t.Fatalf("stream incomplete: %q", raw)
				}
				want = a43HMAC(f, a43Payloads(raw)...)
			}
			var evs []*audit.Event
			digest := a43PromptDigest(t, f, body)
			a43Poll(t, "the request record", func() bool { evs = recs.find(audit.KindRequest, digest); return len(evs) > 0 })
			if got := evs[0].Fields["output_hmac"]; got != want {
				t.Fatalf("output_hmac %s is not the digest of what the client received (%s); the client read %q", got, want, raw)
			}
		})
	}
}

// TestAttack43DigestAfterDoneBound: an engine that goes on after [DONE] past the 64 KiB
// the gateway holds (maxHeldAfterDone): the client gets [DONE] and what was held, the line
// that crossed the bound is dropped — and must not be in the record's output HMAC, which
// is the digest of the answer the client has in full.
func TestAttack43DigestAfterDoneBound(t *testing.T) {
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, a43Event("one", "\n")+"data: [DONE]\n\n")
		for i := 0; i < 100; i++ {
			fmt.Fprintf(w, "data: after-%03d %s\n\n", i, strings.Repeat("x", 990))
		}
	}))
	t.Cleanup(eng.Close)
	recs := &a43Records{}
	f := newFixture(t, func(c *Config) {
		a34Route("eng", eng.URL+"/v1", false)(c)
		c.Records, c.RecordAnswers = recs, true
	})
	body := a43Chat("eng", "after-done", true)
	_, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", "a34-acme", body)
	if !sseDone(raw) {
		t.Fatalf("no [DONE]: %.200q", raw)
	}
	var evs []*audit.Event
	digest := a43PromptDigest(t, f, body)
	a43Poll(t, "the request record", func() bool { evs = recs.find(audit.KindRequest, digest); return len(evs) > 0 })
	payloads := a43Payloads(raw)
	if got, want := evs[0].Fields["output_hmac"], a43HMAC(f, payloads...); got != want {
		t.Fatalf("output_hmac %s is not the digest of the %d data lines the client received (%s); last received %.20q",
			got, len(payloads), want, payloads[len(payloads)-1])
	}
}

// a43ModeEngine answers each request as its prompt "MODE|NONCE" says: a stream of three
// events carrying NONCE, framed per MODE (plain, odd but valid, or broken), followed in
// some modes by bytes no request asked for (an answer smuggled after the end). smuggled
// counts the smuggled answers written.
func a43ModeEngine(t *testing.T) (*tcpEngine, *atomic.Int32) {
	smuggledN := new(atomic.Int32)
	return newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		for {
			_, body, err := e.readReq(br)
			if err != nil {
				return
			}
			mode, nonce, _ := strings.Cut(a34Prompt([]byte(body)), "|")
			evs := []string{a43Event(nonce+"-0", "\n"), a43Event(nonce+"-1", "\n"), "data: [DONE]\n\n"}
			all := strings.Join(evs, "")
			const sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
			chunked := sse + "Transfer-Encoding: chunked\r\n\r\n"
			smuggled := `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"SMUGGLED"}}]}`
			var out string
			hold := false // keep the connection until the gateway closes it
			switch mode {
			case "plain":
				for _, ev := range evs {
					out += a43Chunk(ev)
				}
				out = chunked + out + "0\r\n\r\n"
			case "leading-zeros":
				for _, ev := range evs {
					out += fmt.Sprintf("0000%x\r\n%s\r\n", len(ev), ev)
				}
				out = chunked + out + "000\r\n\r\n"
			case "upper-hex-ext":
				for _, ev := range evs {
					out += fmt.Sprintf("%X;name=\"v;x\";flag\r\n%s\r\n", len(ev), ev)
				}
				out = chunked + out + "0;last=1\r\n\r\n"
			case "trailers":
				out = chunked + a43Chunk(all) + "0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n"
			case "one-byte-chunks":
				out = chunked
				for i := 0; i < len(all); i++ {
					out += a43Chunk(all[i : i+1])
				}
				out += "0\r\n\r\n"
			case "length":
				out = sse + "Content-Length: " + strconv.Itoa(len(all)) + "\r\n\r\n" + all
			case "length-and-chunked":
				out = sse + "Content-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n" + a43Chunk(all) + "0\r\n\r\n"
			case "smuggle-after-last":
				out = chunked + a43Chunk(all) + "0\r\n\r\n" + okAnswer(smuggled)
			case "smuggle-after-length": // Content-Length shorter than what follows
				out = sse + "Content-Length: " + strconv.Itoa(len(all)) + "\r\n\r\n" + all + okAnswer(smuggled)
			case "plus-size":
				out, hold = chunked+"+"+a43Chunk(all)+"0\r\n\r\n", true
			case "overflow-size":
				out, hold = chunked+"1"+strings.Repeat("0", 16)+"\r\n"+all+"\r\n0\r\n\r\n", true
			case "bare-lf-size":
				out, hold = chunked+fmt.Sprintf("%x\n%s\r\n0\r\n\r\n", len(all), all), true
			case "bare-lf-after-data":
				out, hold = chunked+fmt.Sprintf("%x\r\n%s\n0\r\n\r\n", len(all), all), true
			case "space-in-size":
				out, hold = chunked+fmt.Sprintf("%x \r\n%s\r\n0\r\n\r\n", len(all), all), true
			}
			if mode == "one-byte-writes" {
				out = chunked + a43Chunk(all) + "0\r\n\r\n"
				for i := 0; i < len(out); i++ {
					if _, err := c.Write([]byte{out[i]}); err != nil {
						return
					}
				}
				continue
			}
			if strings.HasPrefix(mode, "smuggle") {
				// The smuggled answer in a write of its own, too: maybe read with the
				// first, maybe found waiting when the connection is next taken.
				io.WriteString(c, out[:len(out)-len(okAnswer(smuggled))])
				io.WriteString(c, okAnswer(smuggled))
				smuggledN.Add(1)
				continue
			}
			io.WriteString(c, out)
			if hold {
				io.Copy(io.Discard, br)
				return
			}
		}
	}), smuggledN
}

// TestAttack43EngineFramingKeepAlive: for each way an engine may frame (or mis-frame) a
// streamed answer, the client — raw TCP, on one kept-alive connection — reads a
// well-framed response holding only that engine answer's events (all of them with
// [DONE] when the framing is valid), and its next request on the same connection gets its
// own answer, never bytes of the first engine answer nor of an answer smuggled after it.
func TestAttack43EngineFramingKeepAlive(t *testing.T) {
	e, smuggled := a43ModeEngine(t)
	f := newFixture(t, a34Route("frame", e.url(), false))
	valid := map[string]bool{"plain": true, "leading-zeros": true, "upper-hex-ext": true, "trailers": true, "one-byte-chunks": true,
		"one-byte-writes": true, "length": true, "length-and-chunked": true, "smuggle-after-last": true, "smuggle-after-length": true}
	modes := []string{"plain", "leading-zeros", "upper-hex-ext", "trailers", "one-byte-chunks", "one-byte-writes", "length",
		"length-and-chunked", "smuggle-after-last", "smuggle-after-length", "plus-size", "overflow-size", "bare-lf-size",
		"bare-lf-after-data", "space-in-size"}
	c, err := net.Dial("tcp", f.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	ask := func(prompt string) (*http.Response, string, error) {
		body := a43Chat("frame", prompt, true)
		c.SetDeadline(time.Now().Add(8 * time.Second))
		io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a34-acme\r\nContent-Type: application/json\r\nContent-Length: "+
			strconv.Itoa(len(body))+"\r\n\r\n"+body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, "", err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b), err
	}
	redial := func() {
		c.Close()
		if c, err = net.Dial("tcp", f.srv.Listener.Addr().String()); err != nil {
			t.Fatal(err)
		}
		br = bufio.NewReader(c)
	}
	for i, mode := range modes {
		nonce := fmt.Sprintf("n%02dx", i)
		resp, got, err := ask(mode + "|" + nonce)
		if err != nil && (valid[mode] || resp == nil) {
			t.Fatalf("%s: the client's response is not well framed: %v (read %.200q)", mode, err, got)
		}
		if err != nil {
			// A broken engine answer aborted: the client sees the break (the connection
			// is gone; the next request goes on a new one).
			t.Logf("%s: aborted after %q: %v", mode, got, err)
			redial()
		}
		want := a43Event(nonce+"-0", "\n") + a43Event(nonce+"-1", "\n") + "data: [DONE]\n\n"
		switch {
		case valid[mode] && (resp.StatusCode != 200 || got != want):
			t.Errorf("%s (valid framing): status %d, read %q, want %q", mode, resp.StatusCode, got, want)
		case !valid[mode] && resp.StatusCode == 200 && !strings.HasPrefix(want, got):
			// (A framing broken only after all the data — bare-lf-after-data — may hand
			// the client everything, [DONE] included: the data was framed in full.)
			t.Errorf("%s (broken framing): read %q, not a prefix of the engine's events", mode, got)
		}
		if strings.Contains(got, "SMUGGLED") {
			t.Errorf("%s: the client read the smuggled answer: %q", mode, got)
		}
		if err == nil && resp.Close {
			redial()
		}
		if strings.HasPrefix(mode, "smuggle") {
			// The smuggled answer is on the connection before the next request is sent:
			// an answer that arrives only after it is indistinguishable from its own in
			// HTTP/1.1 (net/http's Transport alike) — this test holds the gateway to
			// what it can see at reuse. On a loaded machine the engine's second write
			// can come that late (the suite, once).
			want := int32(0)
			for _, m := range modes[:i+1] {
				if strings.HasPrefix(m, "smuggle") {
					want++
				}
			}
			for deadline := time.Now().Add(5 * time.Second); smuggled.Load() < want && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
		next := fmt.Sprintf("m%02dx", i)
		resp, got, err = ask("plain|" + next)
		if err != nil {
			t.Fatalf("after %s: the next request on the connection: %v", mode, err)
		}
		if want := a43Event(next+"-0", "\n") + a43Event(next+"-1", "\n") + "data: [DONE]\n\n"; resp.StatusCode != 200 || got != want {
			t.Errorf("after %s: the next request read status %d %q, want its own answer %q", mode, resp.StatusCode, got, want)
		}
		if resp.Close {
			redial()
		}
	}
}

// TestAttack43ConcurrentRecords: 64 client connections, 8 tenants, streamed and
// non-streamed answers, a quarter of the streams left by their client mid-stream. Every
// record is valid, none is changed after it was submitted (the pooled record buffers),
// and every answer a client read in full has exactly one request record: its tenant's,
// status 200, the output HMAC of exactly what that client read; every left stream has one
// record that does not read as a whole answer. No engine request outlives its client.
func TestAttack43ConcurrentRecords(t *testing.T) {
	var live atomic.Int64
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		live.Add(1)
		defer live.Add(-1)
		b, _ := io.ReadAll(r.Body)
		nonce := a34Prompt(b)
		if !strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%q},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":%d,"total_tokens":9}}`, nonce+strings.Repeat("#", len(nonce)), len(nonce))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		n := 6
		if strings.HasPrefix(nonce, "gone") {
			n = 1 << 20 // until the client leaves
		}
		for i := 0; i < n; i++ {
			if _, err := io.WriteString(w, a43Event(fmt.Sprintf("%s-%d", nonce, i), "\n")); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			if n > 6 {
				select {
				case <-r.Context().Done():
					return
				case <-time.After(2 * time.Millisecond):
				}
			}
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(eng.Close)
	recs := &a43Records{}
	f := newFixture(t, func(c *Config) {
		a34Route("conc", eng.URL+"/v1", false)(c)
		c.Records, c.RecordAnswers = recs, true
	})
	type done struct {
		tenant, body, out string
		stream, gone      bool
	}
	var mu sync.Mutex
	var results []done
	var errs []string
	var wg sync.WaitGroup
	for g := 0; g < 64; g++ {
		wg.Go(func() {
			tr := &http.Transport{MaxConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			tenant := "t" + strconv.Itoa(g%8)
			for i := 0; i < 4; i++ {
				stream := (g+i)%2 == 0
				gone := stream && (g+i)%4 == 0 && i > 0
				nonce := fmt.Sprintf("%s-%d-%d", tenant, g, i)
				if gone {
					nonce = "gone" + nonce
				}
				body := a43Chat("conc", nonce, stream)
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				resp, err := a43Do(t, client, ctx, f.srv.URL+"/v1/chat/completions", "a34-"+tenant, body)
				if err != nil {
					cancel()
					mu.Lock()
					errs = append(errs, nonce+": "+err.Error())
					mu.Unlock()
					return
				}
				var out []byte
				if gone {
					// Read the first event, then leave (the connection is closed).
					line, _ := bufio.NewReader(resp.Body).ReadString('\n')
					if !strings.Contains(line, nonce) {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("%s read %q", nonce, line))
						mu.Unlock()
					}
					cancel()
					resp.Body.Close()
				} else {
					out, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					cancel()
					if err != nil || resp.StatusCode != 200 {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("%s: status %d err %v: %.200q", nonce, resp.StatusCode, err, out))
						mu.Unlock()
						continue
					}
				}
				mu.Lock()
				results = append(results, done{tenant: tenant, body: body, out: string(out), stream: stream, gone: gone})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
	a43Poll(t, "no engine request to outlive its client", func() bool { return live.Load() == 0 })
	for _, r := range results {
		digest := a43PromptDigest(t, f, r.body)
		var evs []*audit.Event
		a43Poll(t, "the record of "+r.body, func() bool { evs = recs.find(audit.KindRequest, digest); return len(evs) > 0 })
		if len(evs) != 1 {
			t.Errorf("%s: %d request records, want 1", r.body, len(evs))
			continue
		}
		ev := evs[0]
		if ev.Actor["tenant"] != r.tenant || ev.Actor["principal"] != "u-"+r.tenant {
			t.Errorf("%s: recorded for %v", r.body, ev.Actor)
		}
		if r.stream {
			if n := len(recs.find(audit.KindStreamStart, digest)); n != 1 {
				t.Errorf("%s: %d stream start records, want 1", r.body, n)
			}
		}
		if r.gone {
			if ev.Reason != "client went away mid-stream" {
				t.Errorf("%s: a stream its client left is recorded with reason %q", r.body, ev.Reason)
			}
			continue
		}
		want := a43HMAC(f, r.out)
		if r.stream {
			if !sseDone(r.out) {
				t.Errorf("%s: stream without [DONE]: %.200q", r.body, r.out)
			}
			want = a43HMAC(f, a43Payloads(r.out)...)
		}
		if ev.Fields["status"] != "200" || ev.Fields["output_hmac"] != want {
			t.Errorf("%s: record status %s output_hmac %s, want 200 and %s (what the client read)", r.body, ev.Fields["status"], ev.Fields["output_hmac"], want)
		}
	}
	recs.mu.Lock()
	defer recs.mu.Unlock()
	for _, b := range recs.bad {
		t.Errorf("record the log would refuse: %s", b)
	}
}

// a43SlowReadListener listens on 127.0.0.1 with a small receive buffer and MSS on the
// sockets it accepts: what a peer writes to them is held up in its own process, not
// absorbed by the kernel's buffers.
func a43SlowReadListener(t *testing.T) net.Listener {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, 536)
			}
		})
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("listen with a small receive buffer: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestAttack43HTTPSEngineReadsReusedBuffer: the request body sent to an https engine goes
// through net/http's Transport, whose write loop may still be reading the body after the
// answer came back ("RoundTrip must always close the body ... may do so in a separate
// goroutine even after RoundTrip returns", net/http.RoundTripper; the Transport waits up
// to 50 ms for that write before it drops the connection). The gateway hands it the
// pooled buffer the client's body was read into (applyHardening returns it unedited),
// and the buffer goes back to the pool when the request ends. An engine that answers at
// once and reads the request body late then receives the bytes of whatever request took
// that buffer next — here another tenant's prompt, for a model the engine does not serve.
func TestAttack43HTTPSEngineReadsReusedBuffer(t *testing.T) {
	ts := httptest.NewUnstartedServer(nil)
	ts.StartTLS()
	cert := ts.TLS.Certificates[0]
	roots := x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	ts.Close()
	const secret = "TENANT-B-SECRET-"
	var bDone atomic.Int64 // tenant B's requests answered
	ln := tls.NewListener(a43SlowReadListener(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	leaked := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReaderSize(c, 512))
				if err != nil {
					return
				}
				seen := bDone.Load()
				// Answer before reading the body, and read it once tenant B was served.
				const ans = `{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}`
				io.WriteString(c, okAnswer(ans))
				for end := time.Now().Add(3 * time.Second); bDone.Load() == seen && time.Now().Before(end); {
					time.Sleep(100 * time.Microsecond)
				}
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				rest, _ := io.ReadAll(io.LimitReader(req.Body, req.ContentLength))
				if i := strings.Index(string(rest), secret); i >= 0 {
					leaked <- string(rest[i:min(len(rest), i+64)])
					return
				}
				leaked <- ""
			}()
		}
	}()
	f := newFixture(t, func(c *Config) {
		c.Auth = a34Auth{}
		c.Routes = append(c.Routes, Route{Model: "tls", Upstreams: []string{"https://" + ln.Addr().String() + "/v1"}})
		c.Models.(records)["tls"] = modelrec.Attrs{Classification: "public"}
	})
	f.gw.client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: roots}
	// A's body: large enough that the write is held up, small enough that its buffer is
	// pooled (maxPooledBuffer); max_tokens within the default cap, so it goes unedited.
	aBody := `{"model":"tls","max_tokens":16,"messages":[{"role":"user","content":"` + strings.Repeat("a", 150<<10) + `"}]}`
	bBody := `{"model":"elsewhere","messages":[{"role":"user","content":"` + strings.Repeat(secret, 9<<10) + `"}]}`
	// This engine closes each connection after its one answer without saying so (no
	// "Connection: close"): a request the Transport sends on such a connection, pooled as
	// idle just before the close, fails ("broken pipe", "use of closed network
	// connection") and the gateway answers 502 — fail closed, the engine never saw it (a
	// loaded machine did so 2–4 times in 15 runs). Such an attempt is not counted; five
	// served ones are needed, in at most 15.
	served := 0
	for attempt := 0; served < 5; attempt++ {
		if attempt == 15 {
			t.Fatalf("tenant alpha's request served %d times in %d attempts", served, attempt)
		}
		resp, err := a43Do(t, http.DefaultClient, context.Background(), f.srv.URL+"/v1/chat/completions", "a34-alpha", aBody)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusBadGateway {
			t.Logf("attempt %d: 502 (a connection the engine had closed)", attempt+1)
			continue
		}
		if resp.StatusCode != 200 {
			t.Fatalf("tenant alpha's request: status %d", resp.StatusCode)
		}
		served++
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				resp, err := a43Do(t, http.DefaultClient, context.Background(), f.srv.URL+"/v1/chat/completions", "a34-beta", bBody)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
		wg.Wait()
		bDone.Add(1)
		select {
		case got := <-leaked:
			if got != "" {
				t.Fatalf("the https engine read tenant beta's prompt in tenant alpha's request body (attempt %d): %q", attempt+1, got)
			}
		case <-time.After(8 * time.Second):
			t.Fatal("the https engine did not finish reading")
		}
	}
}

// TestAttack43EngineErrorTextInRecords: an engine's broken answers put its own bytes into
// the gateway's error text (an unsupported Transfer-Encoding is quoted in the reason):
// invalid UTF-8, quotes, control bytes, 900 KiB of it. The client gets an error, never the
// engine's bytes as an answer, and every record stays one the log accepts.
func TestAttack43EngineErrorTextInRecords(t *testing.T) {
	answers := map[string]string{
		"te-utf8":    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gz\xff\xfe\"},\"x\":\"\x01\x7f\r\n\r\n{}",
		"te-long":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: " + strings.Repeat("\xc3\x28\"\\", 225<<10) + "\r\n\r\n{}",
		"cl-garbage": "HTTP/1.1 200 OK\r\nContent-Length: 1\xff2\r\n\r\n{}",
		"status":     "HTTP/1.1 2\xff0 \"\x00\r\n\r\n",
		"te-both":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \xff\r\n\r\n0\r\n\r\n",
	}
	e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
		_, body, err := e.readReq(br)
		if err != nil {
			return
		}
		io.WriteString(c, answers[a34Prompt([]byte(body))])
	})
	recs := &a43Records{}
	f := newFixture(t, func(c *Config) {
		a34Route("err", e.url(), false)(c)
		c.Records = recs
	})
	for mode := range answers {
		for _, stream := range []bool{false, true} {
			body := a43Chat("err", mode, stream)
			resp, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", "a34-acme", body)
			if resp.StatusCode < 500 {
				t.Errorf("%s (stream %v): status %d %.100q", mode, stream, resp.StatusCode, raw)
			}
			digest := a43PromptDigest(t, f, body)
			a43Poll(t, "the record of "+mode, func() bool { return len(recs.find(audit.KindRequest, digest)) > 0 })
		}
	}
	recs.mu.Lock()
	defer recs.mu.Unlock()
	for _, b := range recs.bad {
		t.Errorf("a record the log would refuse: %s", b)
	}
}

// TestAttack43StallMidChunkClientGone: an engine that stalls in the middle of a chunk (a
// stream) or of a Content-Length body (an answer the gateway buffers): when the client
// leaves, the gateway closes the engine's connection — nothing waits on the engine for
// nobody.
func TestAttack43StallMidChunkClientGone(t *testing.T) {
	for _, stream := range []bool{true, false} {
		t.Run("stream="+strconv.FormatBool(stream), func(t *testing.T) {
			var got, closed atomic.Int64
			e := newTCPEngine(t, func(e *tcpEngine, c net.Conn, br *bufio.Reader, _ int64) {
				if _, _, err := e.readReq(br); err != nil {
					return
				}
				if stream {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"+
						a43Chunk(a43Event("first", "\n"))+"1000\r\ndata: {\"half")
				} else {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"half")
				}
				got.Add(1)
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				if _, err := br.ReadByte(); err != nil {
					if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
						closed.Add(1)
					}
				}
			})
			f := newFixture(t, a34Route("stall", e.url(), false))
			c, err := net.Dial("tcp", f.srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			body := a43Chat("stall", "stall", stream)
			io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer a34-acme\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
			a43Poll(t, "the engine to stall mid-body", func() bool { return got.Load() == 1 })
			c.Close()
			a43Poll(t, "the engine's connection to close after the client left", func() bool { return closed.Load() == 1 })
		})
	}
}
