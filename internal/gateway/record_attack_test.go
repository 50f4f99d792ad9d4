package gateway

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strongroom/strongroom/internal/audit"
	"github.com/strongroom/strongroom/internal/modelrec"
	"github.com/strongroom/strongroom/internal/store"
)

// Attacks on "acknowledged means recorded" at the gateway (outside security test).

// startOnlyRecords makes a stream's start record durable but refuses every other record
// (the log fails between a stream's start and its end).
type startOnlyRecords struct {
	mu    sync.Mutex
	kinds []audit.Kind
}

func (r *startOnlyRecords) SubmitEncoded(_ context.Context, rec store.AuditEvent) audit.Future {
	ev := mustParseRecord(rec)
	r.mu.Lock()
	r.kinds = append(r.kinds, ev.Kind)
	r.mu.Unlock()
	if ev.Kind == audit.KindStreamStart {
		return func() (uint64, error) { return 0, nil }
	}
	return func() (uint64, error) { return 0, audit.ErrUnavailable }
}
func (*startOnlyRecords) Healthy() error { return nil }

// sseDone reports whether an SSE client (per the WHATWG event-stream rules: "data:" with
// one optional space) reads an event whose data is "[DONE]", the end of an OpenAI stream.
func sseDone(body string) bool {
	body = strings.ReplaceAll(strings.ReplaceAll(body, "\r\n", "\n"), "\r", "\n")
	for _, line := range strings.Split(body, "\n") {
		v, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue
		}
		v = strings.TrimPrefix(v, " ")
		if v == "[DONE]" {
			return true
		}
	}
	return false
}

// TestAttackStreamDoneSpellings: the engine ends its stream with a [DONE] event spelled as
// the event-stream format allows but not byte for byte "data: [DONE]" (no space after the
// colon, a CR line ending alone). The answer's record cannot be made durable: the client
// must not read a [DONE] (it would take the answer as complete, unrecorded).
func TestAttackStreamDoneSpellings(t *testing.T) {
	for name, c := range map[string]struct{ eol, done string }{
		"canonical":           {"\n", "data: [DONE]\n\n"},
		"crlf":                {"\r\n", "data: [DONE]\r\n\r\n"},
		"no space":            {"\n", "data:[DONE]\n\n"},
		"cr line ending":      {"\n", "data: [DONE]\r\r"},
		"cr lines throughout": {"\r", "data: [DONE]\r\r"},
	} {
		t.Run(name, func(t *testing.T) {
			eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					w.Write([]byte(`{"object":"list","data":[]}`))
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"one"}}]}`+c.eol+c.eol)
				fmt.Fprint(w, c.done)
			}))
			defer eng.Close()
			f := newFixture(t, func(c *Config) {
				c.RecordAnswers = true
				c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
				c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
			})
			recs := &startOnlyRecords{}
			f.gw.cfg.Records = recs
			resp, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", f.alice,
				`{"model":"eng","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			if sseDone(raw) {
				t.Fatalf("the client read [DONE] though the answer's record failed (status %d, records submitted %v): %q",
					resp.StatusCode, recs.kinds, raw)
			}
		})
	}
}

// TestStreamFloodAfterDone: an engine that goes on sending after [DONE] (4 MiB) is not held
// in memory without bound (maxHeldAfterDone): the stream ends, recorded, with [DONE] and at
// most the bound's worth of what followed it.
func TestStreamFloodAfterDone(t *testing.T) {
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"one"}}]}`+"\n\ndata: [DONE]\n\n")
		line := "data: " + strings.Repeat("x", 1000) + "\n\n"
		for range 4 << 10 {
			if _, err := fmt.Fprint(w, line); err != nil {
				return
			}
		}
	}))
	defer eng.Close()
	f := newFixture(t, func(c *Config) {
		c.RecordAnswers = true
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
	})
	b := audit.NewBatcher(f.log, audit.DirBundles{Dir: f.logDir}, audit.BatcherConfig{MaxDelay: time.Millisecond})
	defer b.Close()
	f.gw.cfg.Records = b
	_, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", f.alice,
		`{"model":"eng","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	if !strings.Contains(raw, "data: [DONE]") || len(raw) > 2*maxHeldAfterDone {
		t.Fatalf("stream with a flood after [DONE]: %d bytes, [DONE] %v", len(raw), strings.Contains(raw, "data: [DONE]"))
	}
}

// TestAttackUnaskedStream: the client did not ask for a stream, the engine streams anyway.
// Its start record cannot be made durable: no byte of the stream may reach the client.
func TestAttackUnaskedStream(t *testing.T) {
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"SECRET"}}]}`+"\n\n")
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer eng.Close()
	f := newFixture(t, func(c *Config) {
		c.RecordAnswers = true
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
	})
	f.gw.cfg.Records = failingRecords{}
	resp, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", f.alice,
		`{"model":"eng","messages":[{"role":"user","content":"hi"}]}`)
	if strings.Contains(raw, "SECRET") || sseDone(raw) {
		t.Fatalf("an unrecorded, unasked stream reached the client: %d %q", resp.StatusCode, raw)
	}
}

// allRecords makes every record durable at once and keeps them.
type allRecords struct {
	mu  sync.Mutex
	evs []audit.Event
}

func (r *allRecords) SubmitEncoded(_ context.Context, rec store.AuditEvent) audit.Future {
	ev := mustParseRecord(rec)
	r.mu.Lock()
	r.evs = append(r.evs, *ev)
	r.mu.Unlock()
	return func() (uint64, error) { return 0, nil }
}
func (*allRecords) Healthy() error { return nil }

// TestAttackClientGoneMidStream: the client reads the first event of an endless stream and
// disconnects. The stream's start was recorded before its first byte; the request's own
// record still follows (the stream was served in part), and no [DONE] was ever sent.
func TestAttackClientGoneMidStream(t *testing.T) {
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write([]byte(`{"object":"list","data":[]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			if _, err := fmt.Fprint(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"}}]}`+"\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			default:
			}
		}
	}))
	defer eng.Close()
	f := newFixture(t, func(c *Config) {
		c.RecordAnswers = true
		c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
		c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
	})
	recs := &allRecords{}
	f.gw.cfg.Records = recs
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"eng","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	req.Header.Set("Authorization", "Bearer "+f.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	recs.mu.Lock()
	first := len(recs.evs) > 0 && recs.evs[0].Kind == audit.KindStreamStart
	recs.mu.Unlock()
	if !first {
		t.Fatal("a stream's first byte read with no start record")
	}
	resp.Body.Close() // the client goes away
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs.mu.Lock()
		var final *audit.Event
		for i := range recs.evs {
			if recs.evs[i].Kind == audit.KindRequest {
				final = &recs.evs[i]
			}
		}
		recs.mu.Unlock()
		if final != nil {
			if !strings.Contains(final.Reason, "went away") {
				t.Fatalf("request record after the client left: status %s reason %q — reads as a whole answer", final.Fields["status"], final.Reason)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no request record 10 s after the client left mid-stream")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lfReference is what lfReader must produce from s read n bytes at a time: every bare CR
// (one not followed by LF) as LF; and a CR that ends a read and a blank line (the line
// before it ended) as LF at once, the LF after it, if any, dropped.
func lfReference(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\r' {
			b.WriteByte(s[i])
			continue
		}
		blank := b.Len() > 0 && b.String()[b.Len()-1] == '\n'
		switch {
		case i+1 == len(s) || s[i+1] != '\n':
			b.WriteByte('\n')
		case (i+1)%n == 0 && blank: // the read ends at this CR (not the last byte: i+1 < len(s))
			b.WriteByte('\n')
			i++ // its LF
		default:
			b.WriteByte('\r')
		}
	}
	return b.String()
}

// FuzzLFReader: whatever the upstream's line ends and however its bytes are split between
// reads, the stream loop sees the bytes with bare CRs as LFs and nothing else changed.
func FuzzLFReader(f *testing.F) {
	f.Add("data: a\r\rdata: [DONE]\r\r", uint8(1))
	f.Add("data: a\r\n\r\ndata: [DONE]\r\n\r\n", uint8(3))
	f.Add("\r", uint8(1))
	f.Add("a\r\r\n\rb", uint8(2))
	f.Fuzz(func(t *testing.T, s string, chunk uint8) {
		size := int(chunk%7) + 2
		r := &lfReader{r: &chunked{s: s, n: size}}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if want := lfReference(s, size); string(got) != want {
			t.Fatalf("chunks of %d: %q → %q, want %q", size, s, got, want)
		}
	})
}

// chunked hands out s in reads of at most n bytes.
type chunked struct {
	s string
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.s) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), c.n)], c.s)
	c.s = c.s[k:]
	return k, nil
}

// TestStreamRelayedByteExact: whatever the engine's framing — events cut at any byte across
// writes, blank lines arriving alone or with the next event, comments, named events,
// multi-line data, CRLF line ends — the client reads the engine's bytes exactly (the
// gateway joins an event's blank line to its last line when both are buffered; that must
// never drop, double or move a byte), with and without the answer's record held for [DONE].
func TestStreamRelayedByteExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var events []string
	for i := range 300 {
		ev := fmt.Sprintf(`data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"t%d"}}]}`, i) + "\n"
		switch rng.IntN(6) {
		case 0:
			ev = ": keep-alive\n" + ev
		case 1:
			ev = "event: message\n" + ev
		case 2:
			ev = "data: {\"multi\":\ndata: \"line\"}\n"
		case 3:
			ev = strings.ReplaceAll(ev, "\n", "\r\n") + "\r\n"
		case 4:
			ev = strings.ReplaceAll(ev, "\n", "\r") + "\r" // bare CR line ends
		}
		if !strings.HasSuffix(ev, "\r\n") && !strings.HasSuffix(ev, "\r\r") {
			ev += "\n"
		}
		events = append(events, ev)
	}
	want := strings.Join(events, "") + "data: [DONE]\n\n"
	for _, record := range []bool{false, true} {
		t.Run(fmt.Sprintf("record=%v", record), func(t *testing.T) {
			eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					w.Write([]byte(`{"object":"list","data":[]}`))
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				for rest := want; rest != ""; {
					n := min(len(rest), 1+rng.IntN(400))
					io.WriteString(w, rest[:n])
					w.(http.Flusher).Flush()
					rest = rest[n:]
				}
			}))
			defer eng.Close()
			f := newFixture(t, func(c *Config) {
				c.RecordAnswers = record
				c.Routes = append(c.Routes, Route{Model: "eng", Upstreams: []string{eng.URL + "/v1"}})
				c.Models.(records)["eng"] = modelrec.Attrs{Classification: "public"}
			})
			_, raw := postRaw(t, f.srv.URL+"/v1/chat/completions", f.alice,
				`{"model":"eng","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			// The gateway reads bare CR line ends as LF (lfReader); CRLF stays.
			exp := strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(want, "\r\n", "\x00"), "\r", "\n"), "\x00", "\r\n")
			if raw != exp {
				i := 0
				for i < len(raw) && i < len(exp) && raw[i] == exp[i] {
					i++
				}
				t.Fatalf("relayed stream differs at byte %d of %d (got %d bytes): got %q, want %q", i, len(exp), len(raw),
					raw[max(0, i-40):min(len(raw), i+40)], exp[max(0, i-40):min(len(exp), i+40)])
			}
		})
	}
}
